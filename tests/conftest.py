"""Shared fixtures: the real embedder (loaded once), embedded Qdrant, small corpora on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from ingest.chunking import Chunker
from ingest.embedder import Embedder
from ingest.pipeline import Ingester
from ingest.sparse import SparseEncoder
from ragtune.settings import ChunkingSettings, EmbeddingSettings, Settings, SparseSettings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    limit = embedder.max_tokens - embedder.special_tokens
    return Chunker(embedder.tokenizer, limit, ChunkingSettings(size=size, overlap=overlap))


@pytest.fixture
def qdrant() -> Iterator[QdrantClient]:
    client = QdrantClient(location=":memory:")
    yield client
    client.close()


@pytest.fixture
def ingester(qdrant: QdrantClient, embedder: Embedder, sparse: SparseEncoder) -> Ingester:
    return Ingester(qdrant, embedder, sparse, make_chunker(embedder), write_batch=8)


@pytest.fixture(scope="module")
def ingester_module(embedder: Embedder, sparse: SparseEncoder) -> Iterator[Ingester]:
    """An ingester on its own in-memory Qdrant, shared by one module's tests."""
    client = QdrantClient(location=":memory:")
    yield Ingester(client, embedder, sparse, make_chunker(embedder))
    client.close()
