"""Build the pieces that ingestion and retrieval share, from settings, once per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ingest.backends.base import VectorStore
from ingest.chunking import Chunker
from ingest.embedder import Embedder
from ingest.sparse import SparseEncoder
from ingest.store import open_store
from ragtune.settings import Settings


@dataclass
class Components:
    store: VectorStore
    embedder: Embedder
    sparse: SparseEncoder

    def chunker(self, settings: Settings) -> Chunker:
        return Chunker(self.embedder.tokenizer, self.embedder.token_limit, settings.chunking)


@contextmanager
def open_components(settings: Settings) -> Iterator[Components]:
    """The store, the embedder and the sparse encoder; the store is closed on exit."""
    embedder = Embedder.load(settings.embedding)
    sparse = SparseEncoder(settings.sparse)
    store = open_store(settings)
    try:
        yield Components(store=store, embedder=embedder, sparse=sparse)
    finally:
        store.close()
