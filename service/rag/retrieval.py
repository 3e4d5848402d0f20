"""Retrieval for the service: a Retriever per collection, blocking calls off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from engine.tokens import TokenCounter
from ingest.backends.base import StoredPoint, VectorStore
from ingest.embedder import Embedder
from ingest.search import FilterValue, Hit, Mode, Retriever, build_filter
from ingest.sparse import SparseEncoder
from ingest.store import Collection
from ragtune.errors import ConfigMismatch, InvalidInput, NotFound
from ragtune.settings import Settings
from service.metrics import Metrics
from service.rag.batching import Batcher
from service.rag.context import Source, pack_sources
from service.routes.schemas import RetrievalSpec
from service.workers import Workers, run_on

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
    """Searches and reads the configured store, embeds questions and tokenizes sources, each
    on its own threads (`workers`)."""

    def __init__(
        self,
        settings: Settings,
        store: VectorStore,
        embedder: Embedder,
        sparse: SparseEncoder,
        metrics: Metrics,
        workers: Workers,
    ) -> None:
        self._settings = settings
        self.store = store
        self.embedder = embedder
        self.sparse = sparse
        self._metrics = metrics
        self.workers = workers
        self._retrievers: dict[str, Retriever] = {}
        # Concurrent questions share one embedding call: on CPU, 8 short queries cost about
        # 6 ms each together against 14 ms alone (all-MiniLM-L6-v2, one core).
        self.queries = Batcher(
            self._embed,
            settings.embedding.batch_size,
            on_batch=metrics.embed_batch.observe,
            executor=workers.embedder,
        )

    async def _qdrant(self, call: Callable[[], T]) -> T:
        # An embedded store runs on one thread of its own (workers.store).
        return await run_on(self.workers.store, call)

    async def retriever(self, collection: str) -> Retriever:
        found = self._retrievers.get(collection)
        if found is None:
            found = await self._qdrant(
                lambda: Retriever(self.store, self.embedder, self.sparse, collection)
            )
            self._retrievers[collection] = found
        return found

    async def _with_retriever(self, collection: str, call: Callable[[Retriever], T]) -> T:
        """`call` on the collection's cached retriever. A collection dropped or rebuilt since
        it was opened (`ragtune ingest --reindex`) fails with NotFound or ConfigMismatch: the
        retriever is then opened again, re-reading the manifest, and `call` retried once."""
        cached = self._retrievers.get(collection)
        retriever = cached or await self.retriever(collection)
        try:
            return await self._qdrant(lambda: call(retriever))
        except (NotFound, ConfigMismatch):
            if cached is None:
                raise
            if self._retrievers.get(collection) is cached:
                del self._retrievers[collection]
            fresh = await self.retriever(collection)
            return await self._qdrant(lambda: call(fresh))

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
        await self.retriever(spec.collection)  # refuses a missing collection before embedding
        mode = mode or spec.mode
        merged = merge_filters(spec.filters, filters)
        vector: list[float] | None = None
        if mode != "sparse":
            with self._metrics.timed(route, "embed"):
                vector = await self.queries.submit(query)
        with self._metrics.timed(route, "search"):
            return await self._with_retriever(
                spec.collection,
                lambda retriever: retriever.search(
                    query,
                    mode=mode,
                    top_k=top_k or spec.top_k,
                    filters=merged,
                    score_threshold=spec.score_threshold,
                    per_document=spec.per_document,
                    dense_vector=vector,
                ),
            )

    async def pack(self, hits: list[Hit], counter: TokenCounter, budget: int) -> list[Source]:
        """`pack_sources` on the tokenizer's thread (the only one that touches the counter's
        cache of token offsets)."""
        return await run_on(self.workers.tokens, pack_sources, hits, counter, budget)

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
        merged = dict(merge_filters(spec.filters, filters))
        if doc_ids:
            merged["doc_id"] = list(doc_ids)
        checked = build_filter(merged)
        # Through the retriever: refuses a missing or mismatched collection.
        points = await self._with_retriever(
            spec.collection, lambda _: self._scroll(spec.collection, checked, max_chunks)
        )
        # Thousands of chunks to group and join: off the loop, off the store's thread.
        return await asyncio.to_thread(_documents, points, spec.collection, doc_ids, merged)

    def _scroll(self, collection: str, filters: Filters, max_chunks: int) -> list[StoredPoint]:
        points: list[StoredPoint] = []
        offset: str | None = None
        while True:
            batch, offset = self.store.scroll(
                collection,
                filters=filters,
                limit=min(256, max_chunks + 1 - len(points)),
                offset=offset,
                fields=["doc_id", "chunk_index", "text", "title", "source"],
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
        await self._qdrant(self.store.ping)

    async def on_store(self, call: Callable[[VectorStore], T]) -> T:
        """`call(store)` on the store's thread."""
        return await self._qdrant(lambda: call(self.store))

    async def has_collection(self, name: str) -> bool:
        return await self._qdrant(lambda: Collection(self.store, name).exists())


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


def _documents(
    points: list[StoredPoint],
    collection: str,
    doc_ids: list[str] | None,
    merged: Mapping[str, object],
) -> list[Document]:
    """The scrolled chunks grouped by document (in `doc_ids` order, else by id), each joined
    back into its text."""
    by_doc: dict[str, list[StoredPoint]] = {}
    for point in points:
        payload = point.payload or {}
        by_doc.setdefault(str(payload.get("doc_id")), []).append(point)
    if doc_ids:
        missing = [d for d in doc_ids if d not in by_doc]
        if missing:
            raise NotFound(
                f"no ingested document has id {', '.join(map(repr, missing))} in collection "
                f"{collection!r}; ids are shown by `ragtune search ... --json`"
            )
    if not by_doc:
        raise NotFound(f"no document in collection {collection!r} matches {merged}")
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
