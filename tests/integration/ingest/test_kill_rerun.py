"""A run killed at any point and started again ends with exactly the points a clean run makes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.backends.edge import EdgeStore
from tests.fixtures.collections import Snapshot, differences, snapshot
from tests.fixtures.corpus import synthetic_records, write_jsonl

# How many runs are killed, each at a moment drawn from its own seed: a fraction of a writing
# run (from its in-progress marker to its end, as a clean run took). Whatever the moment
# (embedding, writing, deleting), the re-run must converge; a kill that came too late is made
# again earlier, so every kill lands mid-write. The first seed kills at once.
KILLS = 20


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


def _kill_fraction(seed: int) -> float:
    return 0.0 if seed == 0 else random.Random(seed).random()


@pytest.mark.slow
def test_killed_runs_converge_to_a_clean_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    # Small documents and batches: most of a run is its start-up (torch, the embedder), and
    # 20 kills must stay a few minutes; 8-point batches still give each run many writes.
    v1 = synthetic_records(48, seed=1, words=40)
    v2 = synthetic_records(48, seed=2, words=40)[:40]

    def env_for(name: str) -> dict[str, str]:
        return {
            **os.environ,
            "RAGTUNE_DATA_DIR": str(tmp_path / name),
            "RAGTUNE_INGEST__WRITE_BATCH": "8",
            "PYTHONUNBUFFERED": "1",
        }

    # The reference: a clean run over v2.
    write_jsonl(corpus, v2)
    writing_s = _ingest_timed(env_for("clean"), corpus, tmp_path / "clean")
    expected = _snapshot(tmp_path / "clean")
    assert len({v[0]["doc_id"] for v in expected.values()}) == 40
    assert "in_progress" not in _manifest(tmp_path / "clean")

    # The state every killed run starts from: v1 ingested (copied, not ingested again).
    write_jsonl(corpus, v1)
    _ingest(env_for("v1"), corpus)
    write_jsonl(corpus, v2)  # now v2 replaces most documents and drops 8

    killed_at: list[float] = []
    for seed in range(KILLS):
        data = tmp_path / f"run{seed}"
        env = env_for(f"run{seed}")
        after = writing_s * _kill_fraction(seed)
        while True:
            shutil.rmtree(data, ignore_errors=True)
            shutil.copytree(tmp_path / "v1", data)
            # The kill must land mid-write: the marker the run sets before its first write
            # and clears after its last is still there. A run that finished first, or was
            # past its last write (closing the store, exiting), is killed again earlier.
            if _ingest_killed(env, corpus, data, after) and "in_progress" in _manifest(data):
                break
            after /= 2
        killed_at.append(after)
        _ingest(env, corpus)
        assert "in_progress" not in _manifest(data), f"seed {seed}"
        assert differences(_snapshot(data), expected) == [], f"seed {seed}, killed at {after:.2f} s"
        shutil.rmtree(data)
    # The kills spread over the run, not all at its start.
    assert len(killed_at) == KILLS
    assert max(killed_at) > writing_s / 4, (killed_at, writing_s)
