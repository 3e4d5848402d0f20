"""Retrieval over a ragtune collection: dense, sparse (BM25) or hybrid (reciprocal rank fusion)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qdrant_client import QdrantClient, models

from ingest.embedder import Embedder
from ingest.sparse import SparseEncoder
from ingest.store import DENSE, SPARSE, Collection
from ragtune.errors import ConfigMismatch, InvalidInput

Mode = Literal["dense", "sparse", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "sparse", "hybrid")
FilterValue = str | int | bool
# Hybrid fuses this many candidates per side for every result asked for.
_CANDIDATES_PER_RESULT = 3
# Chunks fetched per document wanted when results are grouped by document.
_CHUNKS_PER_DOCUMENT = 3


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
        client: QdrantClient,
        embedder: Embedder,
        sparse: SparseEncoder,
        collection: str,
    ) -> None:
        self.client = client
        self.embedder = embedder
        self.sparse = sparse
        self.collection = Collection(client, collection)
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
        query_filter = build_filter(filters or {})
        dense: list[float] = []
        if mode != "sparse":
            dense = list(dense_vector) if dense_vector is not None else self.embed_query(query)
        args: dict[str, Any] = {
            "query_filter": query_filter,
            "limit": top_k,
            "with_payload": True,
            "score_threshold": score_threshold,
        }
        if mode == "hybrid":
            depth = top_k * _CANDIDATES_PER_RESULT
            args["prefetch"] = [
                models.Prefetch(
                    query=dense,
                    using=DENSE,
                    limit=depth,
                    filter=query_filter,
                ),
                models.Prefetch(
                    query=self.sparse.encode_query(query),
                    using=SPARSE,
                    limit=depth,
                    filter=query_filter,
                ),
            ]
            args["query"] = models.FusionQuery(fusion=models.Fusion.RRF)
        elif mode == "dense":
            args.update(query=dense, using=DENSE)
        else:
            args.update(query=self.sparse.encode_query(query), using=SPARSE)
        if not per_document:
            points = self.client.query_points(self.collection.name, **args).points
            return [_hit(p) for p in points]
        return self._best_per_document(args, top_k)

    def _best_per_document(self, args: dict[str, Any], top_k: int) -> list[Hit]:
        """The best chunk of each of the `top_k` best documents.

        Fetches ranked chunks and keeps each document's first, fetching deeper until enough
        documents are found, as Qdrant's server-side grouping does; done here because the
        embedded mode's grouping copies every payload in the collection.
        """
        depth = top_k * _CHUNKS_PER_DOCUMENT
        while True:
            args["limit"] = depth
            if "prefetch" in args:
                for prefetch in args["prefetch"]:
                    prefetch.limit = depth
            points = self.client.query_points(self.collection.name, **args).points
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


Filters = Mapping[str, FilterValue | Sequence[FilterValue]]


def _hit(point: models.ScoredPoint) -> Hit:
    return Hit(id=str(point.id), score=float(point.score), payload=point.payload or {})


def build_filter(filters: Filters) -> models.Filter | None:
    """AND of exact matches; a list of values matches any of them."""
    if not filters:
        return None
    must: list[models.Condition] = []
    for key, value in filters.items():
        if not key:
            raise InvalidInput("a filter needs a field name, as in key=value")
        match: models.MatchAny | models.MatchValue
        if isinstance(value, list | tuple):
            values = list(value)
            if len({type(v) for v in values}) > 1:
                raise InvalidInput(f"filter {key!r}: all values must be of one type, got {values}")
            match = models.MatchAny(any=values)
        else:
            match = models.MatchValue(value=value)
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


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
