"""Retrieval for the service: a Retriever per collection, blocking calls off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from qdrant_client import QdrantClient, models

from ingest.embedder import Embedder
from ingest.search import FilterValue, Hit, Mode, Retriever, build_filter
from ingest.sparse import SparseEncoder
from ingest.store import Collection, is_embedded, qdrant_errors
from ragtune.errors import InvalidInput, NotFound
from ragtune.settings import Settings
from service.metrics import Metrics
from service.rag.batching import Batcher
from service.routes.schemas import RetrievalSpec

T = TypeVar("T")
Filters = Mapping[str, FilterValue | list[FilterValue]]


@dataclass(frozen=True)
class Document:
    """An ingested document put back together from its chunks, in order."""

    doc_id: str
    title: str
    text: str
    chunks: int


class RetrievalService:
    """Searches and reads the configured Qdrant on worker threads."""

    def __init__(
        self,
        settings: Settings,
        client: QdrantClient,
        embedder: Embedder,
        sparse: SparseEncoder,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self.client = client
        self.embedder = embedder
        self.sparse = sparse
        self._metrics = metrics
        self._retrievers: dict[str, Retriever] = {}
        # Embedded Qdrant is plain Python structures without locking of its own.
        self._qdrant_lock = threading.Lock() if is_embedded(client) else None
        # Concurrent questions share one embedding call: on CPU, 8 short queries cost about
        # 6 ms each together against 14 ms alone (all-MiniLM-L6-v2, one core).
        self.queries = Batcher(
            self._embed, settings.embedding.batch_size, on_batch=metrics.embed_batch.observe
        )

    async def _qdrant(self, call: Callable[[], T]) -> T:
        def run() -> T:
            with qdrant_errors(self._settings):
                if self._qdrant_lock is None:
                    return call()
                with self._qdrant_lock:
                    return call()

        return await asyncio.to_thread(run)

    async def retriever(self, collection: str) -> Retriever:
        found = self._retrievers.get(collection)
        if found is None:
            found = await self._qdrant(
                lambda: Retriever(self.client, self.embedder, self.sparse, collection)
            )
            self._retrievers[collection] = found
        return found

    async def search(
        self,
        route: str,
        spec: RetrievalSpec,
        query: str,
        *,
        filters: Filters | None = None,
        top_k: int | None = None,
        mode: Mode | None = None,
    ) -> list[Hit]:
        """The route's retrieval for `query`, with the caller's allowed overrides applied."""
        retriever = await self.retriever(spec.collection)
        mode = mode or spec.mode
        merged = merge_filters(spec.filters, filters)
        vector: list[float] | None = None
        if mode != "sparse":
            with self._metrics.timed(route, "embed"):
                vector = await self.queries.submit(query)
        with self._metrics.timed(route, "search"):
            return await self._qdrant(
                lambda: retriever.search(
                    query,
                    mode=mode,
                    top_k=top_k or spec.top_k,
                    filters=merged,
                    score_threshold=spec.score_threshold,
                    per_document=spec.per_document,
                    dense_vector=vector,
                )
            )

    def _embed(self, queries: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = self.embedder.encode(queries).tolist()
        return vectors

    async def documents(
        self,
        spec: RetrievalSpec,
        *,
        doc_ids: list[str] | None,
        filters: Filters | None,
        max_chunks: int,
    ) -> list[Document]:
        """Whole documents named by id or matched by a filter, each rebuilt from its chunks."""
        await self.retriever(spec.collection)  # refuses a missing or mismatched collection
        merged = dict(merge_filters(spec.filters, filters))
        if doc_ids:
            merged["doc_id"] = list(doc_ids)
        query_filter = build_filter(merged)
        points = await self._qdrant(lambda: self._scroll(spec.collection, query_filter, max_chunks))
        by_doc: dict[str, list[models.Record]] = {}
        for point in points:
            payload = point.payload or {}
            by_doc.setdefault(str(payload.get("doc_id")), []).append(point)
        if doc_ids:
            missing = [d for d in doc_ids if d not in by_doc]
            if missing:
                raise NotFound(
                    f"no ingested document has id {', '.join(map(repr, missing))} in collection "
                    f"{spec.collection!r}; ids are shown by `ragtune search ... --json`"
                )
        if not by_doc:
            raise NotFound(f"no document in collection {spec.collection!r} matches {merged}")
        order = doc_ids or sorted(by_doc)
        documents = []
        for doc_id in order:
            chunks = sorted(by_doc[doc_id], key=lambda p: int((p.payload or {})["chunk_index"]))
            first = chunks[0].payload or {}
            documents.append(
                Document(
                    doc_id=doc_id,
                    title=str(first.get("title") or first.get("source") or doc_id),
                    text=_join_chunks([str((c.payload or {}).get("text", "")) for c in chunks]),
                    chunks=len(chunks),
                )
            )
        return documents

    def _scroll(
        self, collection: str, query_filter: models.Filter | None, max_chunks: int
    ) -> list[models.Record]:
        points: list[models.Record] = []
        offset: models.ExtendedPointId | None = None
        while True:
            batch, offset = self.client.scroll(
                collection,
                scroll_filter=query_filter,
                limit=min(256, max_chunks + 1 - len(points)),
                offset=offset,
                with_payload=["doc_id", "chunk_index", "text", "title", "source"],
                with_vectors=False,
            )
            points.extend(batch)
            if len(points) > max_chunks:
                raise InvalidInput(
                    f"the documents asked for have more than {max_chunks} chunks; name fewer "
                    f"documents or a narrower filter"
                )
            if offset is None:
                return points

    async def ping(self) -> None:
        """Return if Qdrant answers; raise UpstreamUnavailable if it does not."""
        await self._qdrant(self.client.get_collections)

    async def has_collection(self, name: str) -> bool:
        return await self._qdrant(lambda: Collection(self.client, name).exists())


def merge_filters(route: Filters, caller: Filters | None) -> Filters:
    """The route's filters AND the caller's; a caller may not loosen a field the route fixes."""
    if not caller:
        return route
    fixed = sorted(set(route).intersection(caller))
    if fixed:
        raise InvalidInput(
            f"filter field {', '.join(map(repr, fixed))} is fixed by the route and cannot be "
            f"set by the caller"
        )
    return {**route, **caller}


def _join_chunks(texts: list[str]) -> str:
    """Chunks overlap (chunking.overlap); drop each chunk's repeat of the previous one's tail."""
    out = texts[0] if texts else ""
    for text in texts[1:]:
        overlap = _overlap(out, text)
        out += ("" if overlap else "\n") + text[overlap:]
    return out


def _overlap(previous: str, following: str, longest: int = 2_000) -> int:
    for size in range(min(len(previous), len(following), longest), 15, -1):
        if previous.endswith(following[:size]):
            return size
    return 0
