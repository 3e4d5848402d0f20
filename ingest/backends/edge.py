"""The embedded store on Qdrant Edge: the server's own segment code (HNSW, the sparse index
with IDF, payload indexes, WAL) in this process.

Edge has no collections and no collection metadata, so each collection is a folder:

    <root>/edge/<name>/collection.json   {"shard": "<folder>", "dim": 384, "manifest": {...}}
    <root>/edge/<name>/<folder>/         the Edge shard

`collection.json` is replaced atomically, so it names one complete shard at every moment:
a rebuild (`--reindex`) writes a new shard beside the old one and flips the file. Folders it
does not name are leftovers of a killed rebuild and are removed when the store opens. One
process at a time holds the store (`<root>/edge/.lock`), as Edge's WAL lock demands anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, cast

import qdrant_edge as edge
from qdrant_client.models import SparseVector

from ingest.backends.base import (
    Fields,
    Filters,
    IndexStatus,
    NewPoint,
    ScoredPoint,
    Search,
    StoredPoint,
    VectorStore,
)
from ingest.backends.errors import classify_message, in_use, missing_collection
from ingest.schema import DENSE, INDEXED_FIELDS, RRF_K, SPARSE, STAGING
from ragtune.errors import InvalidInput, RagtuneError, UpstreamUnavailable

EDGE_DIR = "edge"
_POINTER = "collection.json"
_SCHEMA_TYPES = {
    "keyword": edge.PayloadSchemaType.Keyword,
    "integer": edge.PayloadSchemaType.Integer,
}


class _Shard:
    """An open shard and the collection file that names it."""

    def __init__(self, folder: Path, pointer: dict[str, Any]) -> None:
        self.folder = folder
        self.pointer = pointer
        self.shard = edge.EdgeShard.load(str(folder / str(pointer["shard"])))


class EdgeStore(VectorStore):
    """Collections as Qdrant Edge shards under `<root>/edge`."""

    kind = "edge"

    def __init__(
        self,
        root: str,
        *,
        hnsw_ef: int = 256,
        index_threshold: int = 20_000,
    ) -> None:
        self._temporary = root == ":memory:"
        base = Path(tempfile.mkdtemp(prefix="ragtune-edge-")) if self._temporary else Path(root)
        self.where = root
        self.hnsw_ef = hnsw_ef
        self.index_threshold = index_threshold
        self._root = base / EDGE_DIR
        self._root.mkdir(parents=True, exist_ok=True)
        self._lock_file: IO[str] | None = _lock(self._root / ".lock", root)
        self._shards: dict[str, _Shard] = {}
        # Edge's queries are thread-safe, but opening, rebuilding and closing shards are not
        # against queries in flight; every call holds it (a query costs milliseconds).
        self._mutex = threading.RLock()
        self._clean()

    # -- collections -----------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(
            p.name
            for p in self._root.iterdir()
            if STAGING not in p.name and (p / _POINTER).is_file()
        )

    def exists(self, name: str) -> bool:
        return (self._root / name / _POINTER).is_file()

    def create(self, name: str, dim: int, manifest: dict[str, Any]) -> None:
        with self._mutex:
            folder = self._root / name
            if (folder / _POINTER).is_file():
                raise InvalidInput(f"collection {name!r} already exists")
            folder.mkdir(parents=True, exist_ok=True)
            shard_dir = f"shard-{uuid.uuid4().hex[:8]}"
            shard = edge.EdgeShard.create(str(folder / shard_dir), self._config(dim))
            try:
                for field_name, schema in INDEXED_FIELDS.items():
                    shard.update(
                        edge.UpdateOperation.create_field_index(field_name, _SCHEMA_TYPES[schema])
                    )
                shard.flush()
            finally:
                shard.close()
            _write_json(folder / _POINTER, {"shard": shard_dir, "dim": dim, "manifest": manifest})

    def _config(self, dim: int) -> edge.EdgeConfig:
        # Segments above the threshold get an HNSW index when `optimize` runs (after an
        # ingest, never while serving); below it, exact search is fast (~2 ms at 10k points,
        # bench/retrieval.py). Qdrant counts the threshold in KB of vectors.
        threshold_kb = max(1, self.index_threshold * dim * 4 // 1024)
        return edge.EdgeConfig(
            vectors={DENSE: edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine)},
            sparse_vectors={SPARSE: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)},
            optimizers=edge.EdgeOptimizersConfig(indexing_threshold=threshold_kb),
        )

    def manifest(self, name: str) -> dict[str, Any] | None:
        value = self._pointer(name).get("manifest")
        return value if isinstance(value, dict) else None

    def set_manifest(self, name: str, manifest: dict[str, Any]) -> None:
        with self._mutex:
            pointer = {**self._pointer(name), "manifest": manifest}
            _write_json(self._root / name / _POINTER, pointer)
            if name in self._shards:
                self._shards[name].pointer = pointer

    def drop(self, name: str) -> None:
        with self._mutex:
            self._pointer(name)
            self._close_shard(name)
            # The pointer goes first: a kill after it leaves a folder that `_clean` removes.
            (self._root / name / _POINTER).unlink()
            shutil.rmtree(self._root / name, ignore_errors=True)

    def _pointer(self, name: str) -> dict[str, Any]:
        path = self._root / name / _POINTER
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise missing_collection(name, self.names()) from None
        except ValueError as exc:
            raise InvalidInput(
                f"{path} is damaged ({exc}); rebuild the collection with "
                f"`ragtune ingest PATH --collection {name} --reindex`"
            ) from exc
        if not isinstance(value, dict) or "shard" not in value:
            raise InvalidInput(f"{path} does not name a shard; rebuild with --reindex")
        return value

    def _shard(self, name: str) -> edge.EdgeShard:
        """The collection's open shard. Only this process changes the store (it holds the
        lock), and `publish` and `drop` close what they replace, so an open shard is current:
        searches do not read `collection.json` again."""
        with self._mutex:
            open_shard = self._shards.get(name)
            if open_shard is not None:
                return open_shard.shard
            pointer = self._pointer(name)
            try:
                opened = _Shard(self._root / name, pointer)
            except Exception as exc:  # Edge raises plain Exception with Qdrant's message.
                raise _edge_error(exc, self.where) from exc
            self._shards[name] = opened
            return opened.shard

    def _close_shard(self, name: str) -> None:
        opened = self._shards.pop(name, None)
        if opened is not None:
            opened.shard.close()

    # -- points ----------------------------------------------------------------------

    def count(self, name: str) -> int:
        with self._mutex:
            return int(self._call(name, lambda s: s.count(edge.CountRequest(exact=True))))

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
        request = edge.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=_filter(filters),
            with_payload=list(fields) if not isinstance(fields, bool) else fields,
            with_vector=vectors,
        )
        with self._mutex:
            records, next_offset = self._call(name, lambda s: s.scroll(request))
        return [_stored(r) for r in records], None if next_offset is None else str(next_offset)

    def retrieve(self, name: str, ids: Sequence[str], vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        with self._mutex:
            records = self._call(
                name, lambda s: s.retrieve(list(ids), with_payload=True, with_vector=vectors)
            )
        return [_stored(r) for r in records]

    def upsert(self, name: str, points: Sequence[NewPoint]) -> None:
        if not points:
            return
        edge_points = [
            edge.Point(
                p.id,
                {
                    DENSE: [float(x) for x in p.dense],
                    SPARSE: edge.SparseVector(list(p.sparse.indices), list(p.sparse.values)),
                },
                p.payload,
            )
            for p in points
        ]
        with self._mutex:
            # In the WAL before `update` returns: a killed process replays it on the next open.
            self._call(name, lambda s: s.update(edge.UpdateOperation.upsert_points(edge_points)))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._mutex:
            self._call(name, lambda s: s.update(edge.UpdateOperation.delete_points(list(ids))))

    def search(self, name: str, search: Search) -> list[ScoredPoint]:
        query_filter = _filter(search.filters)
        params = edge.SearchParams(hnsw_ef=self.hnsw_ef)
        dense = edge.Query.Nearest([float(x) for x in search.dense or ()], using=DENSE)
        sparse = edge.Query.Nearest(
            edge.SparseVector(
                list(search.sparse.indices) if search.sparse else [],
                list(search.sparse.values) if search.sparse else [],
            ),
            using=SPARSE,
        )
        if search.mode == "hybrid":
            request = edge.QueryRequest(
                limit=search.limit,
                prefetches=[
                    edge.Prefetch(
                        limit=search.depth, query=dense, filter=query_filter, params=params
                    ),
                    edge.Prefetch(limit=search.depth, query=sparse, filter=query_filter),
                ],
                query=cast(edge.Fusion, edge.Fusion.Rrf(k=RRF_K)),
                filter=query_filter,
                with_payload=True,
                score_threshold=search.score_threshold,
            )
        else:
            request = edge.QueryRequest(
                limit=search.limit,
                query=dense if search.mode == "dense" else sparse,
                filter=query_filter,
                with_payload=True,
                score_threshold=search.score_threshold,
                params=params if search.mode == "dense" else None,
            )
        with self._mutex:
            points = self._call(name, lambda s: s.query(request))
        return [ScoredPoint(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def _call(self, name: str, call: Callable[[edge.EdgeShard], Any]) -> Any:
        shard = self._shard(name)
        try:
            return call(shard)
        except Exception as exc:  # Edge raises plain Exception with Qdrant's message.
            raise _edge_error(exc, self.where) from exc

    # -- rebuilds and the index ------------------------------------------------------

    def staging_name(self, name: str) -> str:
        return f"{name}{STAGING}{uuid.uuid4().hex[:8]}"

    def publish(self, staging: str, name: str) -> None:
        with self._mutex:
            built = self._pointer(staging)
            self._close_shard(staging)
            folder = self._root / name
            folder.mkdir(parents=True, exist_ok=True)
            shard_dir = str(built["shard"])
            # Same filesystem: renames are atomic. The shard moves first, then the pointer
            # flips to it; a kill between the two leaves the old collection whole and the
            # moved shard an unnamed folder that `_clean` removes.
            os.replace(self._root / staging / shard_dir, folder / shard_dir)
            old = self._shards.get(name)
            _write_json(folder / _POINTER, built)
            if old is not None:
                self._close_shard(name)
            shutil.rmtree(self._root / staging, ignore_errors=True)
            self._remove_unnamed(folder)

    def index_status(self, name: str) -> IndexStatus:
        with self._mutex:
            info = self._call(name, lambda s: s.info())
        return IndexStatus(
            points=int(info.points_count),
            # Qdrant counts every named vector's indexed vectors, and the sparse index always
            # covers every point: what is left is the dense vectors HNSW covers.
            dense_indexed=max(0, int(info.indexed_vectors_count) - int(info.points_count)),
            segments=int(info.segments_count),
        )

    def optimize(self, name: str, progress: Callable[[str], None] | None = None) -> bool:
        with self._mutex:
            shard = self._shard(name)
            points = self.count(name)
            if points < self.index_threshold:
                return False
            if progress is not None:
                progress(
                    f"building the vector index of {name!r} ({points} points; "
                    f"searches are exact until it is built)..."
                )
            started = time.perf_counter()
            try:
                changed = bool(shard.optimize())
                shard.flush()
            except Exception as exc:  # Edge raises plain Exception with Qdrant's message.
                raise _edge_error(exc, self.where) from exc
            if progress is not None:
                progress(f"indexed {name!r} in {time.perf_counter() - started:.1f} s")
            return changed

    def ping(self) -> None:
        if self._lock_file is None:
            raise UpstreamUnavailable(f"the embedded Qdrant at {self.where} is closed")

    def close(self) -> None:
        with self._mutex:
            for name in list(self._shards):
                with contextlib.suppress(Exception):
                    self._shards[name].shard.flush()
                self._close_shard(name)
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None
            if self._temporary:
                shutil.rmtree(self._root.parent, ignore_errors=True)

    # -- housekeeping ------------------------------------------------------------------

    def _clean(self) -> None:
        """Remove what killed rebuilds left: staging collections, unnamed shard folders."""
        for path in self._root.iterdir():
            if not path.is_dir():
                continue
            if STAGING in path.name or not (path / _POINTER).is_file():
                shutil.rmtree(path, ignore_errors=True)
            else:
                self._remove_unnamed(path)

    def _remove_unnamed(self, folder: Path) -> None:
        try:
            named = str(self._pointer(folder.name)["shard"])
        except RagtuneError:
            return
        for child in folder.iterdir():
            if child.is_dir() and child.name != named:
                shutil.rmtree(child, ignore_errors=True)


def _lock(path: Path, where: str) -> IO[str]:
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise in_use(where) from None
    return handle


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace `path` atomically and durably."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(value, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _filter(filters: Filters | None) -> edge.Filter | None:
    if not filters:
        return None
    must: list[Any] = []
    for key, value in filters.items():
        if isinstance(value, str | int | bool):
            must.append(_condition(key, edge.MatchValue(value)))
            continue
        values = list(value)
        if all(isinstance(v, bool) for v in values):
            # MatchAny takes strings or integers only: any of several booleans.
            options = [_condition(key, edge.MatchValue(v)) for v in values]
            must.append(edge.Filter(should=list(options)))
        else:
            must.append(_condition(key, edge.MatchAny(values)))  # type: ignore[arg-type]
    return edge.Filter(must=must)


def _condition(key: str, match: Any) -> edge.FieldCondition:
    try:
        return edge.FieldCondition(key, match=match)
    except ValueError:  # Qdrant's path grammar: the caller's mistake, not a 500
        raise InvalidInput(
            f"filter field {key!r} is not a payload path Qdrant reads: use letters, digits, "
            "'_' or '-', with '.' between nested fields"
        ) from None


def _stored(record: edge.Record) -> StoredPoint:
    vector = record.vector if isinstance(record.vector, dict) else {}
    dense = vector.get(DENSE)
    sparse = vector.get(SPARSE)
    return StoredPoint(
        id=str(record.id),
        payload=dict(record.payload or {}),
        dense=[float(x) for x in dense] if isinstance(dense, list) else None,  # type: ignore[arg-type]
        sparse=(
            SparseVector(indices=list(sparse.indices), values=list(sparse.values))
            if isinstance(sparse, edge.SparseVector)
            else None
        ),
    )


def _edge_error(exc: Exception, where: str) -> RagtuneError:
    message = str(exc)
    if "Can't init WAL" in message or "WouldBlock" in message:
        return in_use(where)
    mapped = classify_message(message)
    if mapped is not None:
        return mapped
    if "Service runtime error" in message or "No space left" in message:
        return UpstreamUnavailable(f"the embedded Qdrant at {where} failed: {message}")
    return InvalidInput(f"the embedded Qdrant refused the request: {message}")
