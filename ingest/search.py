"""Retrieval over a ragtune collection: dense, sparse (BM25) or hybrid (reciprocal rank fusion)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ingest.backends.base import Filters, FilterValue, Mode, ScoredPoint, Search, VectorStore
from ingest.embedder import Embedder
from ingest.sparse import SparseEncoder
from ingest.store import Collection
from ragtune.errors import ConfigMismatch, InvalidInput

MODES: tuple[Mode, ...] = ("dense", "sparse", "hybrid")
__all__ = ["MODES", "FilterValue", "Filters", "Hit", "Mode", "Retriever", "build_filter"]
# Hybrid fuses this many candidates per side for every result asked for.
_CANDIDATES_PER_RESULT = 3
# Chunks fetched per document wanted when results are grouped by document.
_CHUNKS_PER_DOCUMENT = 3
# Extra results fetched so that equal scores at the cut are settled by id, not by the store.
_TIE_MARGIN = 8


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk."""

    id: str
    score: float
    payload: dict[str, Any]

    @property
    def doc_id(self) -> str:
        return str(self.payload.get("doc_id", ""))

    @property
    def text(self) -> str:
        return str(self.payload.get("text", ""))


class Retriever:
    """Queries one collection with the embedder it was built with."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        sparse: SparseEncoder,
        collection: str,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.sparse = sparse
        self.collection = Collection(store, collection)
        self.collection.require()
        manifest = self.collection.manifest() or {}
        built_with = (manifest.get("embedder") or {}).get("model")
        if built_with != embedder.name:
            raise ConfigMismatch(
                f"collection {collection!r} was embedded with {built_with!r}, but the configured "
                f"embedder is {embedder.name!r}; set RAGTUNE_EMBEDDING__MODEL={built_with} "
                f"to query it"
            )
        if manifest.get("sparse") != sparse.info():
            self._sparse_mismatch: str | None = (
                f"collection {collection!r} was built with sparse settings "
                f"{manifest.get('sparse')}, not {sparse.info()}"
            )
        else:
            self._sparse_mismatch = None

    def search(
        self,
        query: str,
        mode: Mode = "hybrid",
        top_k: int = 5,
        filters: Filters | None = None,
        score_threshold: float | None = None,
        per_document: bool = False,
        dense_vector: Sequence[float] | None = None,
    ) -> list[Hit]:
        """The best `top_k` chunks for `query`; with `per_document`, the best chunk of each
        of the best `top_k` documents. `dense_vector` is the query's embedding when the
        caller has computed it already (`embed_query`)."""
        if not query.strip():
            raise InvalidInput("the query is empty")
        if mode not in MODES:
            raise InvalidInput(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if top_k < 1:
            raise InvalidInput(f"top_k must be at least 1, got {top_k}")
        if mode != "dense" and self._sparse_mismatch:
            raise ConfigMismatch(self._sparse_mismatch + "; use --mode dense or rebuild it")
        checked = build_filter(filters or {})
        dense: list[float] | None = None
        if mode != "sparse":
            dense = list(dense_vector) if dense_vector is not None else self.embed_query(query)
        search = Search(
            mode=mode,
            limit=top_k,
            dense=dense,
            sparse=self.sparse.encode_query(query) if mode != "dense" else None,
            filters=checked,
            depth=top_k * _CANDIDATES_PER_RESULT,
            score_threshold=score_threshold,
        )
        if not per_document:
            wider = replace(search, limit=top_k + _TIE_MARGIN)
            return [
                _hit(p) for p in _ranked(self.store.search(self.collection.name, wider))[:top_k]
            ]
        return self._best_per_document(search, top_k)

    def _best_per_document(self, search: Search, top_k: int) -> list[Hit]:
        """The best chunk of each of the `top_k` best documents.

        Fetches ranked chunks and keeps each document's first, fetching deeper until enough
        documents are found, as Qdrant's server-side grouping does (the same on every store).
        """
        depth = top_k * _CHUNKS_PER_DOCUMENT
        while True:
            deeper = replace(search, limit=depth, depth=depth)
            points = _ranked(self.store.search(self.collection.name, deeper))
            best: dict[str, Hit] = {}
            for point in points:
                hit = _hit(point)
                best.setdefault(hit.doc_id, hit)
            if len(best) >= top_k or len(points) < depth:
                return list(best.values())[:top_k]
            depth *= 2

    def embed_query(self, query: str) -> list[float]:
        """The query's dense vector."""
        return [float(x) for x in self.embedder.encode([query])[0]]


def _ranked(points: list[ScoredPoint]) -> list[ScoredPoint]:
    """Best first, equal scores by id. Ties are common in hybrid search (two chunks that trade
    ranks between the dense and the sparse side fuse to the same score), and Qdrant Edge
    returns tied points in an order that changes between openings of a store: without this the
    same question could get its sources in another order, and so another prompt and answer."""
    return sorted(points, key=lambda p: (-p.score, p.id))


def _hit(point: ScoredPoint) -> Hit:
    return Hit(id=point.id, score=point.score, payload=point.payload)


def build_filter(filters: Filters) -> dict[str, FilterValue | list[FilterValue]]:
    """The filters checked: AND of exact matches, a list of values matching any of them."""
    checked: dict[str, FilterValue | list[FilterValue]] = {}
    for key, value in filters.items():
        if not key:
            raise InvalidInput("a filter needs a field name, as in key=value")
        for number in [value] if isinstance(value, str | int | bool) else value:
            if isinstance(number, int) and not -(2**63) <= number < 2**63:
                raise InvalidInput(f"filter {key!r}: {number} is outside Qdrant's 64-bit integers")
        if isinstance(value, str | int | bool):
            checked[key] = value
            continue
        values = list(value)
        if not values:
            raise InvalidInput(f"filter {key!r}: give at least one value")
        if len({type(v) for v in values}) > 1:
            raise InvalidInput(f"filter {key!r}: all values must be of one type, got {values}")
        checked[key] = values
    return checked


def parse_filters(items: Sequence[str]) -> dict[str, FilterValue | list[FilterValue]]:
    """`key=value` strings to filters; numbers and true/false are typed, repeats mean any-of."""
    out: dict[str, FilterValue | list[FilterValue]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"filter {item!r} is not of the form key=value")
        value = _typed(raw)
        key = key.strip()
        if key in out:
            prev = out[key]
            out[key] = [*(prev if isinstance(prev, list) else [prev]), value]
        else:
            out[key] = value
    return out


def _typed(raw: str) -> FilterValue:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return int(raw)
    except ValueError:
        return raw
