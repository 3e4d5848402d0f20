"""ragtune's collection schema, the same on every store: vector names, payload indexes, ids."""

from __future__ import annotations

import re
import uuid

from ragtune.errors import InvalidInput

DENSE = "dense"
SPARSE = "sparse"
SCHEMA_VERSION = 1
# Fixed namespace so point ids are the same on every machine and every run.
_NAMESPACE = uuid.UUID("5b0b7b8e-8f6c-4b8e-9a55-2f1f3c6d7e01")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
# Payload fields that filters and the ingester's bookkeeping use, with their index type.
INDEXED_FIELDS: dict[str, str] = {
    "doc_id": "keyword",
    "source": "keyword",
    "file_type": "keyword",
    "file_name": "keyword",
    "content_hash": "keyword",
    "chunk_index": "integer",
}
# A collection that `--reindex` builds is named `<name>.build-<hex>` until it is published.
STAGING = ".build-"
# Reciprocal rank fusion's k, as Qdrant's server and qdrant-client's local mode apply it:
# a point's fused score is the sum over prefetches of 1 / (k + position), counted from 0.
RRF_K = 2


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
