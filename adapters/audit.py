"""An append-only JSON-lines log of who changed the adapter registry, shared by processes."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BLOCK_BYTES = 64 * 1024


class AuditLog:
    """One JSON object a line: time (UTC, ISO 8601), actor, action, target, result, detail."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, actor: str, action: str, target: str, result: str, detail: str = "") -> None:
        """Add one entry; an exclusive lock keeps lines from several processes whole."""
        entry = {
            "time": datetime.now(UTC).isoformat(),
            "actor": actor,
            "action": action,
            "target": target,
            "result": result,
            "detail": detail,
        }
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def tail(self, n: int) -> list[dict[str, Any]]:
        """The last `n` entries, oldest first; a line torn by a crash is skipped."""
        if n <= 0 or not self.path.is_file():
            return []
        entries: list[dict[str, Any]] = []
        for line in self._lines_backwards():
            try:
                entry = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(entry, dict):
                entries.append(entry)
                if len(entries) == n:
                    break
        return entries[::-1]

    def _lines_backwards(self) -> Iterator[bytes]:
        # Read from the end in blocks, so a long log costs only the part that is shown.
        with self.path.open("rb") as f:
            pos = f.seek(0, os.SEEK_END)
            rest = b""
            while pos > 0:
                step = min(BLOCK_BYTES, pos)
                pos -= step
                f.seek(pos)
                lines = (f.read(step) + rest).split(b"\n")
                rest = lines[0]  # may continue in the block before
                yield from (line for line in reversed(lines[1:]) if line.strip())
            if rest.strip():
                yield rest
