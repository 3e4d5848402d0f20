"""A run killed at any point and started again ends with exactly the points a clean run makes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from tests.fixtures.corpus import synthetic_records, write_jsonl

# Fractions of a clean run's duration at which the second run is killed. Whatever the moment
# (model loading, embedding, writing, deleting), the re-run must converge.
KILL_AT = (0.5, 0.7, 0.85, 0.95)


def _ingest(env: dict[str, str], path: Path, kill_after: float | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "ingest",
            str(path),
            "--collection",
            "k",
            "--prune",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if kill_after is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
    else:
        try:
            proc.communicate(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            # Reaps the process and closes its pipes.
            proc.communicate()
    return time.perf_counter() - started


def _snapshot(data: Path) -> dict[str, tuple[object, ...]]:
    client = QdrantClient(path=str(data / "qdrant"))
    try:
        points, _ = client.scroll("k", limit=100_000, with_payload=True, with_vectors=True)
    finally:
        client.close()
    out = {}
    for p in points:
        payload = p.payload or {}
        vectors = p.vector if isinstance(p.vector, dict) else {}
        dense = np.asarray(vectors["dense"], dtype=np.float32)
        sparse = vectors["sparse"]
        out[str(p.id)] = (
            payload["doc_id"],
            payload["chunk_index"],
            payload["chunk_count"],
            payload["content_hash"],
            payload["text"],
            dense,
            tuple(sparse.indices),
            tuple(round(v, 5) for v in sparse.values),
        )  # type: ignore[union-attr]
    return out


def _same(a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]]) -> None:
    assert a.keys() == b.keys()
    for key, left in a.items():
        right = b[key]
        assert left[:5] == right[:5]
        assert np.allclose(left[5], right[5], atol=1e-5)  # type: ignore[arg-type]
        assert left[6:] == right[6:]


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
    clean_time = _ingest(env_for("clean"), corpus)
    expected = _snapshot(tmp_path / "clean")
    assert len({v[0] for v in expected.values()}) == 140

    for i, fraction in enumerate(KILL_AT):
        env = env_for(f"run{i}")
        write_jsonl(corpus, v1)
        _ingest(env, corpus)
        # Now v2 replaces most documents and drops 20; the run is killed part-way.
        write_jsonl(corpus, v2)
        _ingest(env, corpus, kill_after=clean_time * fraction)
        _ingest(env, corpus)
        _same(_snapshot(tmp_path / f"run{i}"), expected)
