"""Build the pieces that ingestion and retrieval share, from settings, once per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from qdrant_client import QdrantClient

from ingest.chunking import Chunker
from ingest.embedder import Embedder
from ingest.sparse import SparseEncoder
from ingest.store import open_qdrant
from ragtune.settings import Settings


@dataclass
class Components:
    client: QdrantClient
    embedder: Embedder
    sparse: SparseEncoder

    def chunker(self, settings: Settings) -> Chunker:
        return Chunker(self.embedder.tokenizer, self.embedder.token_limit, settings.chunking)


@contextmanager
def open_components(settings: Settings) -> Iterator[Components]:
    """Qdrant client, embedder and sparse encoder; the client is closed on exit."""
    embedder = Embedder.load(settings.embedding)
    sparse = SparseEncoder(settings.sparse)
    client = open_qdrant(settings)
    try:
        yield Components(client=client, embedder=embedder, sparse=sparse)
    finally:
        client.close()
