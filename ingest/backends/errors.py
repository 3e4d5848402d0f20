"""Qdrant's failures turned into ragtune's domain errors by what they mean: no answer or a
server fault is UpstreamUnavailable (retry), a missing collection NotFound, a refused request
InvalidInput or ConfigMismatch (a schema that is not ragtune's), a refused key UpstreamRejected.
Used by both stores: the server answers with HTTP statuses, qdrant-client's local mode and
Qdrant Edge raise exceptions whose messages are Qdrant's own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ingest.schema import INDEXED_FIELDS
from ragtune.errors import (
    ConfigMismatch,
    InvalidInput,
    NotFound,
    RagtuneError,
    UpstreamRejected,
    UpstreamUnavailable,
)

# How the server and the embedded stores name a missing collection.
_MISSING_COLLECTION = re.compile(r"Collection `([^`]+)` doesn't exist|^Collection (\S+) not found")
_MISSING_INDEX = re.compile(r"Index required but not found for \\?\"([^\"\\]+)")
# A collection whose vectors are not ragtune's (other names, or another embedder's size).
_SCHEMA = re.compile(
    r"Not existing vector name|vector \S+ is not found in the collection|"
    r"Vector dimension error|not aligned",
    re.IGNORECASE,
)


@contextmanager
def client_errors(where: str) -> Iterator[None]:
    """qdrant-client's exceptions (server or local mode) as domain errors."""
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
        # The local mode raises ValueError where the server answers 404 or 400.
        mapped = classify_message(str(exc))
        if mapped is None:
            raise
        raise mapped from exc


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
        return missing(message) or NotFound(f"Qdrant at {where}: {message}")
    if status == 400 or status == 422:
        return _refused(message) or InvalidInput(f"Qdrant refused the request: {message}")
    if status in (408, 429) or status >= 500:
        return UpstreamUnavailable(
            f"Qdrant at {where} failed ({status} {exc.reason_phrase}: {message}); "
            f"check that it is healthy, then retry"
        )
    return InvalidInput(f"Qdrant refused the request ({status} {exc.reason_phrase}): {message}")


def classify_message(message: str) -> RagtuneError | None:
    """The domain error for an embedded store's message, or None if it is not one."""
    return missing(message) or (_refused(message) if _SCHEMA.search(message) else None)


def missing(message: str) -> NotFound | None:
    found = _MISSING_COLLECTION.search(message)
    if found is None:
        return None
    return missing_collection(found.group(1) or found.group(2))


def missing_collection(name: str, known: list[str] | None = None) -> NotFound:
    return NotFound(
        f"collection {name!r} does not exist"
        + (f" (existing: {', '.join(sorted(known))})" if known else "")
        + f"; create it with `ragtune ingest PATH --collection {name}`"
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


def in_use(where: str) -> InvalidInput:
    return InvalidInput(
        f"the embedded Qdrant at {where} is in use by another process (a running "
        f"`ragtune serve`, say). Stop it, or run a Qdrant server and point every "
        f"process at it with RAGTUNE_QDRANT__URL"
    )
