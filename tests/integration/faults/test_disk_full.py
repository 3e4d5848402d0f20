"""The data directory's disk full, on a real tiny filesystem (a tmpfs mounted for the test):
during an ingest into the embedded store, and under the captured traffic while serving.

An ingest stops with an error saying the disk is full before Qdrant Edge runs out of room (its
memory-mapped files would end the process with SIGBUS); the collection is left as an
interrupted run leaves it (marked in progress, or, for a rebuild, untouched), and a re-run
after freeing space ends with exactly the points of a clean run. Capture never fails a
request: the answer is served, the lost record is counted in /metrics and logged, and no
JSONL file keeps a partial line; once there is room, answers are captured again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ingest.backends.edge import EdgeStore
from ingest.embedder import Embedder
from ingest.pipeline import MIN_FREE_BYTES, Ingester, IngestOptions
from ingest.sparse import SparseEncoder
from ragtune.errors import UpstreamUnavailable
from tests.conftest import TinyModel, make_chunker
from tests.fixtures.api import api_settings, running_app
from tests.fixtures.collections import differences, snapshot
from tests.fixtures.corpus import write_tree
from tests.fixtures.scripted_backend import ScriptedBackend
from tests.integration.faults.served import ask, metric, write_routes

# What `ragtune ingest` needs here: the embedded store takes ~50 MB of pages on a tmpfs
# (Qdrant Edge's memory-mapped files), the reserve kept free is 64 MiB.
TMPFS_KIB = 256 * 1024


@contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of `size_kib` mounted at `path` for the block; skips the test where mounting
    is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no `mount` here: the disk-full tests need a small tmpfs of their own")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}): the "
            f"disk-full tests need a small filesystem of their own (root, or CAP_SYS_ADMIN)"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(fs: Path, leave: int = 0) -> Path:
    """A ballast file taking the filesystem's free space down to `leave` bytes (to the page)."""
    ballast = fs / "ballast"
    with ballast.open("ab") as f:
        while (room := free(fs) - leave) >= 4096:
            try:
                f.write(b"\0" * min(room, 1024 * 1024))
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return ballast


class Measured(EdgeStore):
    """The embedded store, noting the free space when its first collection was created."""

    free_after_create: int = 0

    def create(self, name: str, dim: int, manifest: dict[str, Any]) -> None:
        super().create(name, dim, manifest)
        self.free_after_create = free(Path(self.where))


def ragtune_ingest(data: Path, docs: Path) -> subprocess.CompletedProcess[str]:
    """`ragtune ingest DOCS --collection k` on data dir `data`, one document per write, in a
    process of its own: a full disk that the ingest failed to stop at would end it by SIGBUS."""
    script = Path(sys.executable).parent / "ragtune"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
    env = {**os.environ, "RAGTUNE_DATA_DIR": str(data), "RAGTUNE_INGEST__WRITE_BATCH": "1"}
    return subprocess.run(
        [*head, "ingest", str(docs), "--collection", "k", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def stopped_for_lack_of_room(run: subprocess.CompletedProcess[str], data: Path) -> None:
    assert run.returncode != -signal.SIGBUS, "the ingest died of SIGBUS: the disk filled up"
    assert run.returncode == 1, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    message = " ".join(run.stderr.split())
    assert f"the disk under the embedded Qdrant at {data / 'qdrant'} is full" in message
    assert "run the same command again" in message


def test_an_ingest_on_a_full_disk_stops_and_a_rerun_converges(
    tmp_path: Path, embedder: Embedder, sparse: SparseEncoder
) -> None:
    docs = write_tree(tmp_path / "docs")
    chunker = make_chunker(embedder)

    def ingest(store: EdgeStore, reindex: bool = False) -> None:
        Ingester(store, embedder, sparse, chunker, write_batch=1).run(
            [docs], IngestOptions(collection="k", reindex=reindex)
        )

    with tmpfs(tmp_path / "fs", TMPFS_KIB) as fs:
        # A clean run on the same filesystem: the points to converge to, and the room a run
        # takes (for the collection, then for its points).
        start = free(fs)
        clean_store = Measured(str(fs / "clean"))
        ingest(clean_store)
        created = start - clean_store.free_after_create
        written = clean_store.free_after_create - free(fs)
        clean = snapshot(clean_store, "k")
        clean_store.close()
        shutil.rmtree(fs / "clean")
        # Above the reserve: room for the collection and about half of what its points take.
        room = MIN_FREE_BYTES + created + written // 2
        data = fs / "data"

        ballast = fill(fs, leave=room)
        stopped_for_lack_of_room(ragtune_ingest(data, docs), data)
        store = EdgeStore(str(data / "qdrant"))
        partial = snapshot(store, "k")
        assert 0 < len(partial) < len(clean)  # stopped between two writes
        assert "in_progress" in (store.manifest("k") or {})  # readers can tell

        ballast.unlink()
        ingest(store)
        assert differences(clean, snapshot(store, "k")) == []
        assert "in_progress" not in (store.manifest("k") or {})
        store.close()  # closed and opened again: its files as the next process finds them

        # A rebuild that fills the disk leaves the collection as it was, and nothing else. In
        # this process: the run above showed that the ingest stops before Edge runs out.
        store = EdgeStore(str(data / "qdrant"))
        ballast = fill(fs, leave=room)
        with pytest.raises(UpstreamUnavailable, match=r"is full: .* run the same command again"):
            ingest(store, reindex=True)
        assert store.names() == ["k"]
        assert differences(clean, snapshot(store, "k")) == []
        edge = data / "qdrant" / "edge"
        assert sorted(p.name for p in edge.iterdir() if p.is_dir()) == ["k"]
        ballast.unlink()
        ingest(store, reindex=True)
        assert differences(clean, snapshot(store, "k")) == []
        store.close()


def test_capture_on_a_full_disk_never_fails_a_request(
    tiny_model: TinyModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(tmp_path, tiny_model.path, api={"routes_file": write_routes(tmp_path)})
    captures = settings.data_dir / "captures"
    answer = "an answer worth keeping as training data " * 10
    with (
        tmpfs(captures, 256) as fs,
        running_app(settings, lambda _: [ScriptedBackend(answer)]) as client,
    ):
        assert ask(client).status == 200  # the route's folder and today's file exist
        settled(client, 1)
        fill(fs)  # every page taken: the file's last one still has room for a record or two

        with caplog.at_level(logging.ERROR, logger="service.journal"):
            for _ in range(6):
                outcome = ask(client)
                assert outcome.status == 200, outcome
                assert outcome.body["answer"] == answer
            captured, dropped = settled(client, 7)
        assert dropped > 0
        assert any("No space left on device" in r.getMessage() for r in caplog.records)
        whole_lines(captures, captured)

        (fs / "ballast").unlink()
        for _ in range(3):
            assert ask(client).status == 200
        assert settled(client, 10) == (captured + 3, dropped)
        whole_lines(captures, captured + 3)


def settled(client: Any, served: int) -> tuple[int, int]:
    """(captured, dropped) once every one of `served` answers is one or the other."""
    deadline = time.monotonic() + 10
    while True:
        captured = metric(client, "ragtune_captured_total", route="ask")
        dropped = metric(client, "ragtune_capture_dropped_total", route="ask", reason="write_error")
        if captured + dropped >= served or time.monotonic() > deadline:
            assert captured + dropped == served
            return int(captured), int(dropped)
        time.sleep(0.05)


def whole_lines(captures: Path, expected: int) -> None:
    """Every capture file ends with a whole line, and holds `expected` records."""
    lines = []
    for path in sorted(captures.rglob("*.jsonl")):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path} ends in a partial line"
        lines += [json.loads(line) for line in data.splitlines()]
    assert len(lines) == expected
    assert os.path.isdir(captures / "ask")
