"""The store on qdrant-client: a Qdrant server (`qdrant.url`), or qdrant-client's local mode
(a pure-Python emulation, brute force, for platforms without a Qdrant Edge wheel and for
stores written before Edge was the default)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from ingest.backends.base import (
    Fields,
    Filters,
    NewPoint,
    ScoredPoint,
    Search,
    StoredPoint,
    VectorStore,
)
from ingest.backends.errors import client_errors, in_use
from ingest.schema import DENSE, INDEXED_FIELDS, SPARSE, STAGING

_SCHEMA_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
}


@dataclass(frozen=True)
class Layout:
    """How a server spreads a new collection over a cluster (None: the server's default).
    Collections built by `--reindex` get it too: they are created the same way."""

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None


class ClientStore(VectorStore):
    """Collections on a Qdrant server or in qdrant-client's local mode. A collection rebuilt
    with `--reindex` is built under a staging name and published by moving a Qdrant collection
    alias, so readers never see it half-built."""

    def __init__(
        self, client: QdrantClient, kind: str, where: str, layout: Layout | None = None
    ) -> None:
        self.client = client
        self.kind = kind
        self.where = where
        self.layout = layout or Layout()

    @classmethod
    def server(
        cls, url: str, api_key: str | None, timeout_s: float, layout: Layout | None = None
    ) -> ClientStore:
        client = QdrantClient(
            url=url,
            api_key=api_key,
            # Whole seconds (qdrant-client's type), rounded up: int() made 0.5 s into 0.
            timeout=math.ceil(timeout_s),
            # The client's version probe runs in a thread and can only warn; an unreachable
            # server is reported instead by the first request, as UpstreamUnavailable.
            check_compatibility=False,
        )
        return cls(client, "server", url, layout)

    @classmethod
    def local(cls, location: str) -> ClientStore:
        if location == ":memory:":
            return cls(QdrantClient(location=":memory:"), "local", location)
        Path(location).mkdir(parents=True, exist_ok=True)
        try:
            client = QdrantClient(path=location)
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise in_use(location) from exc
            raise
        return cls(client, "local", location)

    def _errors(self) -> Any:
        return client_errors(self.where)

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def _target(self, name: str) -> str:
        """The collection that `name` is, through its alias if it has one."""
        return self._aliases().get(name, name)

    def names(self) -> list[str]:
        with self._errors():
            aliases = self._aliases()
            targets = set(aliases.values())
            real = [c.name for c in self.client.get_collections().collections]
        return sorted({*aliases, *(n for n in real if n not in targets and STAGING not in n)})

    def exists(self, name: str) -> bool:
        with self._errors():
            return bool(self.client.collection_exists(name)) or name in self._aliases()

    def create(self, name: str, dim: int, manifest: dict[str, Any]) -> None:
        with self._errors():
            self.client.create_collection(
                name,
                vectors_config={
                    DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                },
                sparse_vectors_config={
                    SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
                metadata={"ragtune": manifest},
                shard_number=self.layout.shard_number,
                replication_factor=self.layout.replication_factor,
                write_consistency_factor=self.layout.write_consistency_factor,
            )
            if self.kind == "server":
                # The local mode has no payload indexes (it scans every payload).
                for field_name, schema in INDEXED_FIELDS.items():
                    self.client.create_payload_index(name, field_name, _SCHEMA_TYPES[schema])

    def manifest(self, name: str) -> dict[str, Any] | None:
        with self._errors():
            meta = self.client.get_collection(self._target(name)).config.metadata or {}
        value = meta.get("ragtune")
        return value if isinstance(value, dict) else None

    def set_manifest(self, name: str, manifest: dict[str, Any]) -> None:
        # Qdrant merges metadata by top-level key: this replaces ragtune's whole entry.
        with self._errors():
            self.client.update_collection(self._target(name), metadata={"ragtune": manifest})

    def drop(self, name: str) -> None:
        with self._errors():
            target = self._aliases().get(name)
            if target is not None:
                self.client.update_collection_aliases(
                    change_aliases_operations=[
                        models.DeleteAliasOperation(
                            delete_alias=models.DeleteAlias(alias_name=name)
                        )
                    ]
                )
                name = target
            self.client.delete_collection(name)

    def count(self, name: str) -> int:
        with self._errors():
            return int(self.client.count(name, exact=True).count)

    def scroll(
        self,
        name: str,
        *,
        limit: int,
        offset: str | None = None,
        fields: Fields = True,
        vectors: bool = False,
        filters: Filters | None = None,
    ) -> tuple[list[StoredPoint], str | None]:
        with self._errors():
            points, next_offset = self.client.scroll(
                name,
                scroll_filter=_filter(filters),
                limit=limit,
                offset=offset,
                with_payload=list(fields) if not isinstance(fields, bool) else fields,
                with_vectors=vectors,
            )
        return [_stored(p) for p in points], None if next_offset is None else str(next_offset)

    def retrieve(self, name: str, ids: Sequence[str], vectors: bool = False) -> list[StoredPoint]:
        with self._errors():
            records = self.client.retrieve(name, list(ids), with_payload=True, with_vectors=vectors)
        return [_stored(r) for r in records]

    def upsert(self, name: str, points: Sequence[NewPoint]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=p.id, vector={DENSE: list(p.dense), SPARSE: p.sparse}, payload=p.payload
            )
            for p in points
        ]
        with self._errors():
            self.client.upsert(name, points=structs, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._errors():
            self.client.delete(
                name, points_selector=models.PointIdsList(points=list(ids)), wait=True
            )

    def search(self, name: str, search: Search) -> list[ScoredPoint]:
        query_filter = _filter(search.filters)
        args: dict[str, Any] = {
            "query_filter": query_filter,
            "limit": search.limit,
            "with_payload": True,
            "score_threshold": search.score_threshold,
        }
        if search.mode == "hybrid":
            args["prefetch"] = [
                models.Prefetch(
                    query=list(search.dense or ()),
                    using=DENSE,
                    limit=search.depth,
                    filter=query_filter,
                ),
                models.Prefetch(
                    query=search.sparse, using=SPARSE, limit=search.depth, filter=query_filter
                ),
            ]
            # The server's default k is RRF_K; a parametrised RRF needs a newer server.
            args["query"] = models.FusionQuery(fusion=models.Fusion.RRF)
        elif search.mode == "dense":
            args.update(query=list(search.dense or ()), using=DENSE)
        else:
            args.update(query=search.sparse, using=SPARSE)
        with self._errors():
            points = self.client.query_points(name, **args).points
        return [ScoredPoint(str(p.id), float(p.score), p.payload or {}) for p in points]

    def staging_name(self, name: str) -> str:
        return f"{name}{STAGING}{uuid.uuid4().hex[:8]}"

    def publish(self, staging: str, name: str) -> None:
        with self._errors():
            aliases = self._aliases()
            old = aliases.get(name)
            ops: list[models.DeleteAliasOperation | models.CreateAliasOperation] = []
            if old is not None:
                ops.append(
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))
                )
            elif self.client.collection_exists(name):
                # A collection made before aliases (or by another tool) holds the name: it
                # must go before the alias can take it, so readers see a short gap here once.
                self.client.delete_collection(name)
            ops.append(
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=staging, alias_name=name)
                )
            )
            # One request: the alias moves atomically from the old build to the new.
            self.client.update_collection_aliases(change_aliases_operations=ops)
            if old is not None and old != staging:
                self.client.delete_collection(old)

    def ping(self) -> None:
        with self._errors():
            self.client.get_collections()

    def close(self) -> None:
        self.client.close()


def _filter(filters: Filters | None) -> models.Filter | None:
    if not filters:
        return None
    must: list[models.Condition] = []
    for key, value in filters.items():
        match: models.MatchAny | models.MatchValue
        if isinstance(value, str | int | bool):
            match = models.MatchValue(value=value)
        else:
            match = models.MatchAny(any=list(value))
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must)


def _stored(record: models.Record) -> StoredPoint:
    vector = record.vector if isinstance(record.vector, dict) else {}
    dense = vector.get(DENSE)
    sparse = vector.get(SPARSE)
    return StoredPoint(
        id=str(record.id),
        payload=record.payload or {},
        dense=[float(x) for x in dense] if isinstance(dense, list) else None,  # type: ignore[arg-type]
        sparse=sparse if isinstance(sparse, models.SparseVector) else None,
    )
