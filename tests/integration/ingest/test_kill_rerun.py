"""A run killed at any point and started again ends with exactly the points a clean run makes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.backends.edge import EdgeStore
from tests.fixtures.collections import Snapshot, differences, snapshot
from tests.fixtures.corpus import synthetic_records, write_jsonl

# When, within a writing run (from its in-progress marker to its end, as a clean run took),
# the run is killed. Whatever the moment (embedding, writing, deleting), the re-run must
# converge; a kill that came too late is made again earlier, so every kill lands mid-write.
KILL_AT = (0.0, 0.35, 0.7)


# What `ragtune ingest PATH --collection k --prune` runs, without the CLI around it (the kill
# must land in the pipeline, not in start-up).
_INGEST = """
import sys
from ingest.components import open_components
from ingest.pipeline import Ingester, IngestOptions
from ragtune.settings import Settings

settings = Settings()
with open_components(settings) as parts:
    Ingester(
        parts.store, parts.embedder, parts.sparse, parts.chunker(settings),
        settings.ingest.write_batch,
    ).run([sys.argv[1]], IngestOptions(collection="k", prune=True))
"""


def _command(path: Path) -> list[str]:
    return [sys.executable, "-c", _INGEST, str(path)]


def _ingest(env: dict[str, str], path: Path) -> None:
    proc = subprocess.run(_command(path), env=env, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()


def _in_progress(data: Path) -> bool:
    """Whether the collection's manifest carries a writing run's marker. Read from the
    embedded store's collection file, which is replaced whole (the store itself is locked by
    the process that writes)."""
    try:
        pointer = json.loads((data / "qdrant" / "edge" / "k" / "collection.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return "in_progress" in (pointer.get("manifest") or {})


def _ingest_timed(env: dict[str, str], path: Path, data: Path) -> float:
    """A full run; the seconds from its in-progress marker to its end."""
    proc = subprocess.Popen(
        _command(path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while not _in_progress(data) and proc.poll() is None:
        time.sleep(0.01)
    marked = time.perf_counter()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    return time.perf_counter() - marked


def _ingest_killed(env: dict[str, str], path: Path, data: Path, after: float) -> bool:
    """Start a run and kill it `after` seconds past its in-progress marker; False if it
    ended before the kill."""
    proc = subprocess.Popen(
        _command(path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not _in_progress(data):
            assert proc.poll() is None, "the run ended without writing anything"
            time.sleep(0.01)
        if after > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=after)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        return True
    finally:
        proc.wait()


def _manifest(data: Path) -> dict[str, object]:
    store = EdgeStore(str(data / "qdrant"))
    try:
        manifest = store.manifest("k")
    finally:
        store.close()
    assert manifest is not None
    return manifest


def _snapshot(data: Path) -> Snapshot:
    store = EdgeStore(str(data / "qdrant"))
    try:
        return snapshot(store, "k")
    finally:
        store.close()


@pytest.mark.slow
def test_killed_runs_converge_to_a_clean_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    v1, v2 = synthetic_records(160, seed=1), synthetic_records(160, seed=2)[:140]

    def env_for(name: str) -> dict[str, str]:
        return {
            **os.environ,
            "RAGTUNE_DATA_DIR": str(tmp_path / name),
            "RAGTUNE_INGEST__WRITE_BATCH": "16",
            "PYTHONUNBUFFERED": "1",
        }

    # The reference: a clean run over v2.
    write_jsonl(corpus, v2)
    writing_s = _ingest_timed(env_for("clean"), corpus, tmp_path / "clean")
    expected = _snapshot(tmp_path / "clean")
    assert len({v[0]["doc_id"] for v in expected.values()}) == 140
    assert "in_progress" not in _manifest(tmp_path / "clean")

    for i, fraction in enumerate(KILL_AT):
        data = tmp_path / f"run{i}"
        env = env_for(f"run{i}")
        after = writing_s * fraction
        while True:
            write_jsonl(corpus, v1)
            _ingest(env, corpus)
            # Now v2 replaces most documents and drops 20; the run is killed part-way.
            write_jsonl(corpus, v2)
            if _ingest_killed(env, corpus, data, after):
                break
            after /= 2  # it finished first (the machine got faster): kill it earlier
        # The kill landed mid-write: the marker the run sets before its first write and
        # clears after its last is still there.
        assert "in_progress" in _manifest(data)
        _ingest(env, corpus)
        assert "in_progress" not in _manifest(data)
        assert differences(_snapshot(data), expected) == []
