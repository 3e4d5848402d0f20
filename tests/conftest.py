"""Shared fixtures: the real embedder (loaded once), embedded Qdrant, small corpora on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.vllm_cpu import VLLMServer, missing_venv_message, serve_vllm, vllm_venv
from ingest.backends.base import VectorStore
from ingest.backends.edge import EdgeStore
from ingest.chunking import Chunker
from ingest.embedder import Embedder
from ingest.pipeline import Ingester
from ingest.sparse import SparseEncoder
from ragtune.settings import ChunkingSettings, EmbeddingSettings, Settings, SparseSettings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class TinyModel:
    """The tiny test model and its LoRA adapters (see tests/fixtures/tiny_model.py)."""

    path: Path
    adapters: dict[str, Path]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Built once per session: base, two rank-8 adapters, one rank-32 (above the limit)."""
    from tests.fixtures.tiny_model import build_lora, build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base")
    adapters = {
        "alpha": build_lora(base, root / "alpha", rank=8, seed=1),
        "beta": build_lora(base, root / "beta", rank=8, seed=2),
        "too-big": build_lora(base, root / "too-big", rank=32, seed=3),
    }
    return TinyModel(path=base, adapters=adapters)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load(EmbeddingSettings())


@pytest.fixture(scope="session")
def sparse() -> SparseEncoder:
    return SparseEncoder(SparseSettings())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", qdrant={"path": ":memory:"})


def make_chunker(embedder: Embedder, size: int | None = None, overlap: int = 32) -> Chunker:
    return Chunker(
        embedder.tokenizer, embedder.token_limit, ChunkingSettings(size=size, overlap=overlap)
    )


@pytest.fixture
def qdrant() -> Iterator[VectorStore]:
    """The embedded store (Qdrant Edge) in a temporary folder."""
    store = EdgeStore(":memory:")
    yield store
    store.close()


@pytest.fixture
def ingester(qdrant: VectorStore, embedder: Embedder, sparse: SparseEncoder) -> Ingester:
    return Ingester(qdrant, embedder, sparse, make_chunker(embedder), write_batch=8)


@pytest.fixture(scope="module")
def ingester_module(embedder: Embedder, sparse: SparseEncoder) -> Iterator[Ingester]:
    """An ingester on its own embedded store, shared by one module's tests."""
    store = EdgeStore(":memory:")
    yield Ingester(store, embedder, sparse, make_chunker(embedder))
    store.close()


@pytest.fixture(scope="session")
def vllm_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """A real vLLM-CPU server for the tiny model (LoRA rank <= 16, 4 slots, xgrammar JSON).

    Skipped when the vLLM venv is missing, except under CI, which must run these tests.
    """
    venv = vllm_venv()
    missing = missing_venv_message(venv)
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {missing}")
        pytest.skip(missing)
    # Built only now, so a skip costs nothing.
    tiny_model: TinyModel = request.getfixturevalue("tiny_model")
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    with serve_vllm(
        tiny_model.path, log_path, venv=venv, max_lora_rank=16, max_loras=4, dtype="float32"
    ) as server:
        yield server
