"""Append-only JSON-lines files written off the request path: requests put records on a bounded
queue and one writer thread appends them. A full queue refuses the record at once (the caller
counts the drop) instead of making a request wait for the disk.

Each file is appended to under an exclusive lock (flock), one whole line per write, so several
processes sharing a data directory keep their lines whole; a line torn by a process that
stopped mid-write is cut off before the next append (readers skip a torn last line), and lines
a full disk took only part of are cut off at once (the records are counted as not written)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A record, or a function the writer thread calls to make it: costly work (redaction) then
# never holds the event loop.
Record = dict[str, Any] | Callable[[], dict[str, Any]]
# Called on the writer thread once the record is on disk (None) or could not be written.
Done = Callable[[BaseException | None], None]
# Records the writer takes from the queue at once: one lock, write and fsync per file.
BATCH = 256
_TAIL_BLOCK = 64 * 1024


@dataclass(frozen=True)
class _Entry:
    path: Path
    record: Record
    done: Done | None

    def settle(self, error: BaseException | None) -> None:
        if self.done is not None:
            try:
                self.done(error)
            except Exception:
                log.exception("a journal callback failed")


class Journal:
    """A bounded queue of (file, record) and the thread that appends them as JSON lines."""

    def __init__(self, queue_size: int, name: str = "ragtune-capture") -> None:
        self._queue: queue.Queue[_Entry | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def submit(self, path: Path, record: Record, done: Done | None = None) -> bool:
        """Queue `record` for `path`; False, at once, when the queue is full or closed. The
        record, and what a record function reads, must not change afterwards."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(_Entry(path, record, done))
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        """Write everything queued, then stop the thread. Blocks: call it off the event loop."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)  # waits for room while the thread drains a full queue
            self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            self._write([e for e in batch if e is not None])
        # Anything a racing submit queued after the stop marker.
        rest: list[_Entry] = []
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not None:
                rest.append(entry)
        self._write(rest)

    def _write(self, entries: list[_Entry]) -> None:
        by_file: dict[Path, list[_Entry]] = {}
        for entry in entries:
            by_file.setdefault(entry.path, []).append(entry)
        for path, group in by_file.items():
            lines: list[bytes] = []
            made: list[_Entry] = []
            for entry in group:
                try:
                    record = entry.record() if callable(entry.record) else entry.record
                    lines.append(_line(record))
                except Exception as exc:  # a record that cannot be made or is not JSON
                    log.exception("could not make a record for %s", path)
                    entry.settle(exc)
                else:
                    made.append(entry)
            if not made:
                continue
            error: BaseException | None = None
            try:
                append_lines(path, b"".join(lines))
            except Exception as exc:  # the disk; never the thread
                log.error("could not append %d record(s) to %s: %s", len(made), path, exc)
                error = exc
            for entry in made:
                entry.settle(error)


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def append_lines(path: Path, lines: bytes) -> None:
    """Append whole lines to `path` (made if missing) under an exclusive lock, and sync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _cut_torn_tail(fd, path)
            start = os.fstat(fd).st_size
            try:
                view = memoryview(lines)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                # A full disk takes part of the lines (a short write, then ENOSPC): cut them
                # off now, under the lock, so that no reader meets a partial line.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _cut_torn_tail(fd: int, path: Path) -> None:
    """Every writer appends whole lines under the lock, so a file that does not end with a
    newline was left by a process that died mid-write: cut the partial line off, or the next
    record would be glued to it."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    keep = 0
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found >= 0:
            keep = start + found + 1
            break
        end = start
    os.ftruncate(fd, keep)
    log.warning(
        "%s ended in a partial line (%d bytes, left by a process that stopped mid-write): "
        "removed it before appending",
        path,
        size - keep,
    )
