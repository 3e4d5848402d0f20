"""The Qdrant side: client, collection schema, point ids, and what a collection already holds.

The same code serves the embedded store (qdrant-client local mode, `path=` or ":memory:")
and a Qdrant server (`url=`).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ragtune.errors import (
    ConfigMismatch,
    InvalidInput,
    NotFound,
    RagtuneError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from ragtune.settings import Settings

DENSE = "dense"
SPARSE = "sparse"
SCHEMA_VERSION = 1
# Fixed namespace so point ids are the same on every machine and every run.
_NAMESPACE = uuid.UUID("5b0b7b8e-8f6c-4b8e-9a55-2f1f3c6d7e01")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
# Payload fields that filters and the ingester's bookkeeping use.
INDEXED_FIELDS: dict[str, models.PayloadSchemaType] = {
    "doc_id": models.PayloadSchemaType.KEYWORD,
    "source": models.PayloadSchemaType.KEYWORD,
    "file_type": models.PayloadSchemaType.KEYWORD,
    "file_name": models.PayloadSchemaType.KEYWORD,
    "content_hash": models.PayloadSchemaType.KEYWORD,
    "chunk_index": models.PayloadSchemaType.INTEGER,
}
_STATE_FIELDS = ["doc_id", "content_hash", "chunk_count", "source"]


def open_qdrant(settings: Settings) -> QdrantClient:
    """A client for the configured Qdrant: the server at `qdrant.url`, else embedded."""
    q = settings.qdrant
    if q.url:
        return QdrantClient(
            url=q.url,
            api_key=q.api_key.get_secret_value() if q.api_key else None,
            # Whole seconds (qdrant-client's type), rounded up: int() made 0.5 s into 0.
            timeout=math.ceil(q.timeout_s),
            # The client's version probe runs in a thread and can only warn; an unreachable
            # server is reported instead by the first request, as UpstreamUnavailable.
            check_compatibility=False,
        )
    location = settings.qdrant_location()
    if location == ":memory:":
        return QdrantClient(location=":memory:")
    Path(location).mkdir(parents=True, exist_ok=True)
    try:
        return QdrantClient(path=location)
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise InvalidInput(
                f"the embedded Qdrant at {location} is in use by another process (a running "
                f"`ragtune serve`, say). Stop it, or run a Qdrant server and point every "
                f"process at it with RAGTUNE_QDRANT__URL"
            ) from exc
        raise


def is_embedded(client: QdrantClient) -> bool:
    """True for qdrant-client's local mode, where payload indexes do nothing."""
    return type(client._client).__name__ == "QdrantLocal"


@contextmanager
def qdrant_errors(settings: Settings) -> Iterator[None]:
    """Turn Qdrant's failures into domain errors by what they mean: no answer or a server
    fault is UpstreamUnavailable (retry), a missing collection NotFound, a refused request
    InvalidInput or ConfigMismatch, a refused API key UpstreamRejected."""
    where = settings.qdrant.url or settings.qdrant_location()
    try:
        yield
    except (ResponseHandlingException, ConnectionError) as exc:
        raise UpstreamUnavailable(
            f"Qdrant at {where} did not answer ({exc}); check that it is running and "
            f"RAGTUNE_QDRANT__URL is right"
        ) from exc
    except UnexpectedResponse as exc:
        raise classify_response(exc, where) from exc
    except ValueError as exc:
        # The embedded store raises ValueError where the server answers 404 or 400.
        mapped = classify_local(exc)
        if mapped is None:
            raise
        raise mapped from exc


# How the server and the embedded store name a missing collection.
_MISSING_COLLECTION = re.compile(r"Collection `([^`]+)` doesn't exist|^Collection (\S+) not found")
_MISSING_INDEX = re.compile(r"Index required but not found for \\?\"([^\"\\]+)")
# A collection whose vectors are not ragtune's (other names, or another embedder's size).
_SCHEMA = re.compile(
    r"Not existing vector name|vector \S+ is not found in the collection|"
    r"Vector dimension error|not aligned",
    re.IGNORECASE,
)


def classify_response(exc: UnexpectedResponse, where: str) -> RagtuneError:
    """The domain error for an HTTP error status from a Qdrant server."""
    status = exc.status_code or 0
    message = _server_message(exc)
    if status in (401, 403):
        return UpstreamRejected(
            f"Qdrant at {where} refused the API key ({status} {exc.reason_phrase}: {message}); "
            f"set RAGTUNE_QDRANT__API_KEY to the server's key"
        )
    if status == 404:
        return _missing(message) or NotFound(f"Qdrant at {where}: {message}")
    if status == 400 or status == 422:
        return _refused(message) or InvalidInput(f"Qdrant refused the request: {message}")
    if status in (408, 429) or status >= 500:
        return UpstreamUnavailable(
            f"Qdrant at {where} failed ({status} {exc.reason_phrase}: {message}); "
            f"check that it is healthy, then retry"
        )
    return InvalidInput(f"Qdrant refused the request ({status} {exc.reason_phrase}): {message}")


def classify_local(exc: ValueError) -> RagtuneError | None:
    """The domain error for the embedded store's ValueError, or None if it is not one."""
    message = str(exc)
    return _missing(message) or (_refused(message) if _SCHEMA.search(message) else None)


def _missing(message: str) -> NotFound | None:
    found = _MISSING_COLLECTION.search(message)
    if found is None:
        return None
    name = found.group(1) or found.group(2)
    return NotFound(
        f"collection {name!r} does not exist; create it with "
        f"`ragtune ingest PATH --collection {name}`"
    )


def _refused(message: str) -> RagtuneError | None:
    index = _MISSING_INDEX.search(message)
    if index is not None:
        field_name = index.group(1)
        if field_name in INDEXED_FIELDS:
            return ConfigMismatch(
                f"the collection has no payload index on {field_name!r}, which ragtune "
                f"creates (Qdrant: {message}); rebuild it with "
                f"`ragtune ingest PATH --collection NAME --reindex`"
            )
        return InvalidInput(
            f"filtering on {field_name!r} needs a payload index, and the collection has none "
            f"(Qdrant: {message}); filter on one of {', '.join(INDEXED_FIELDS)}"
        )
    if _SCHEMA.search(message):
        return ConfigMismatch(
            f"the collection's vectors do not match ragtune's schema or the configured "
            f"embedder (Qdrant: {message}); rebuild it with "
            f"`ragtune ingest PATH --collection NAME --reindex`"
        )
    return None


def _server_message(exc: UnexpectedResponse) -> str:
    """Qdrant's own words: `{"status": {"error": "..."}}`, else the raw body."""
    try:
        body = json.loads(exc.content)
        return str(body["status"]["error"])
    except (ValueError, KeyError, TypeError):
        return exc.content.decode("utf-8", "replace")[:500] or exc.reason_phrase


def point_id(doc_id: str, chunk_index: int) -> str:
    """The deterministic id of a document's n-th chunk."""
    return str(uuid.uuid5(_NAMESPACE, f"{doc_id}\x1f{chunk_index}"))


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(
            f"collection name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
            f"starting with a letter or digit"
        )
    return name


@dataclass
class DocState:
    """What a collection holds for one document."""

    ids: set[str] = field(default_factory=set)
    hashes: set[str] = field(default_factory=set)
    chunk_counts: set[int] = field(default_factory=set)
    source: str = ""

    def is_complete(self, doc_id: str, content_hash: str) -> bool:
        """True when exactly a clean run's points for this content are present."""
        if self.hashes != {content_hash} or len(self.chunk_counts) != 1:
            return False
        (count,) = self.chunk_counts
        return self.ids == {point_id(doc_id, i) for i in range(count)}


class Collection:
    """One Qdrant collection in ragtune's schema."""

    def __init__(self, client: QdrantClient, name: str) -> None:
        self.client = client
        self.name = check_name(name)

    def exists(self) -> bool:
        return bool(self.client.collection_exists(self.name))

    def require(self) -> None:
        if not self.exists():
            known = [c.name for c in self.client.get_collections().collections]
            raise NotFound(
                f"collection {self.name!r} does not exist"
                + (f" (existing: {', '.join(sorted(known))})" if known else "")
                + f"; create it with `ragtune ingest PATH --collection {self.name}`"
            )

    def manifest(self) -> dict[str, Any] | None:
        """The settings the collection was built with, or None if it was not made by ragtune."""
        meta = self.client.get_collection(self.name).config.metadata or {}
        value = meta.get("ragtune")
        return value if isinstance(value, dict) else None

    def create(self, manifest: dict[str, Any], dim: int) -> None:
        self.client.create_collection(
            self.name,
            vectors_config={DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            metadata={"ragtune": manifest},
        )
        if not is_embedded(self.client):
            for name, schema in INDEXED_FIELDS.items():
                self.client.create_payload_index(self.name, name, schema)

    def set_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the recorded manifest (Qdrant merges metadata by top-level key)."""
        self.client.update_collection(self.name, metadata={"ragtune": manifest})

    def drop(self) -> None:
        self.client.delete_collection(self.name)

    def count(self) -> int:
        return int(self.client.count(self.name, exact=True).count)

    def state(self) -> dict[str, DocState]:
        """Per document: its point ids, content hashes and chunk counts (no vectors)."""
        states: dict[str, DocState] = {}
        offset: Any = None
        while True:
            points, offset = self.client.scroll(
                self.name,
                limit=2048,
                offset=offset,
                with_payload=_STATE_FIELDS,
                with_vectors=False,
            )
            for p in points:
                payload = p.payload or {}
                state = states.setdefault(str(payload.get("doc_id")), DocState())
                state.ids.add(str(p.id))
                state.hashes.add(str(payload.get("content_hash")))
                state.chunk_counts.add(int(payload.get("chunk_count", -1)))
                state.source = str(payload.get("source", ""))
            if offset is None:
                return states

    def points(self, ids: Sequence[str]) -> list[models.Record]:
        """The points with these ids, payloads and vectors included."""
        return list(
            self.client.retrieve(self.name, list(ids), with_payload=True, with_vectors=True)
        )

    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        self.client.upsert(self.name, points=list(points), wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(
                self.name, points_selector=models.PointIdsList(points=list(ids)), wait=True
            )


def compare_manifest(name: str, stored: dict[str, Any] | None, wanted: dict[str, Any]) -> None:
    """Refuse to mix settings in one collection; the message names `--reindex`."""
    if stored is None:
        raise ConfigMismatch(
            f"collection {name!r} was not created by ragtune (no settings recorded); "
            f"use another --collection, or rebuild it with --reindex"
        )
    diffs = [
        f"{section}: collection has {stored.get(section)}, settings give {wanted[section]}"
        for section in ("schema", "embedder", "chunker", "sparse")
        if stored.get(section) != wanted[section]
    ]
    if diffs:
        raise ConfigMismatch(
            f"collection {name!r} was built with other settings ("
            + "; ".join(diffs)
            + "). Re-run with --reindex to rebuild it with the new settings (every document "
            "is embedded again), or change the settings back"
        )
