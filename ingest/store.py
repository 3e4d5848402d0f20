"""The store a ragtune collection lives in, and one collection in ragtune's schema.

`open_store` picks the implementation from settings: a Qdrant server at `qdrant.url`
(qdrant-client), else the embedded store at `qdrant.path`: Qdrant Edge, or qdrant-client's
local mode where no Edge wheel installs. Everything above this module talks to a
`VectorStore` (ingest/backends/base.py) and never to either library.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.backends.base import NewPoint, StoredPoint, VectorStore
from ingest.backends.errors import missing_collection
from ingest.schema import STAGING, check_name, point_id
from ragtune.errors import ConfigMismatch
from ragtune.settings import Settings

log = logging.getLogger(__name__)
_STATE_FIELDS = ["doc_id", "content_hash", "chunk_count", "source"]
MIGRATE_HINT = "`ragtune store migrate`"


def open_store(settings: Settings) -> VectorStore:
    """The configured store: the server at `qdrant.url`, else embedded at `qdrant.path`."""
    from ingest.backends.client import ClientStore, Layout

    q = settings.qdrant
    if q.url:
        layout = Layout(q.shard_number, q.replication_factor, q.write_consistency_factor)
        return ClientStore.server(
            q.url, q.api_key.get_secret_value() if q.api_key else None, q.timeout_s, layout
        )
    location = settings.qdrant_location()
    if q.embedded == "local":
        return ClientStore.local(location)
    try:
        from ingest.backends.edge import EdgeStore
    except ImportError as exc:
        log.warning(
            "Qdrant Edge is not installed here (%s): the embedded store falls back to "
            "qdrant-client's local mode, which searches by brute force in Python (seconds per "
            "question at 100k chunks, bench/retrieval.py). Install qdrant-edge-py, or run a "
            "Qdrant server and set RAGTUNE_QDRANT__URL",
            exc,
        )
        return ClientStore.local(location)
    store = EdgeStore(location, hnsw_ef=q.hnsw_ef, index_threshold=q.index_threshold)
    old = local_mode_collections(location)
    pending = sorted(set(old) - set(store.names()))
    if pending:
        store.legacy = pending
        log.warning(
            "the embedded store at %s still holds collections written by qdrant-client's "
            "local mode (%s); run %s to copy them to Qdrant Edge without embedding again",
            location,
            ", ".join(pending),
            MIGRATE_HINT,
        )
    return store


def local_mode_collections(location: str) -> list[str]:
    """The collections that qdrant-client's local mode keeps at `location` (its meta.json),
    by the names readers use: an alias (a collection rebuilt with `--reindex`) rather than
    the build it points at."""
    if location == ":memory:":
        return []
    try:
        meta = json.loads((Path(location) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(meta, dict) or not isinstance(meta.get("collections"), dict):
        return []
    found = meta.get("aliases")
    aliases: dict[str, str] = found if isinstance(found, dict) else {}
    targets = set(aliases.values())
    named = {n for n in meta["collections"] if n not in targets and STAGING not in n}
    return sorted(named | set(aliases))


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
    """One collection in ragtune's schema, in whichever store holds it."""

    def __init__(self, store: VectorStore, name: str) -> None:
        self.store = store
        self.name = check_name(name)

    def exists(self) -> bool:
        return self.store.exists(self.name)

    def require(self) -> None:
        if not self.exists():
            error = missing_collection(self.name, self.store.names())
            if self.name in self.store.legacy:
                error = type(error)(
                    f"collection {self.name!r} is in the embedded store that qdrant-client's "
                    f"local mode wrote; run {MIGRATE_HINT} to copy it to Qdrant Edge"
                )
            raise error

    def manifest(self) -> dict[str, Any] | None:
        """The settings the collection was built with, or None if it was not made by ragtune."""
        return self.store.manifest(self.name)

    def create(self, manifest: dict[str, Any], dim: int) -> None:
        self.store.create(self.name, dim, manifest)

    def set_manifest(self, manifest: dict[str, Any]) -> None:
        self.store.set_manifest(self.name, manifest)

    def drop(self) -> None:
        self.store.drop(self.name)

    def count(self) -> int:
        return self.store.count(self.name)

    def state(self) -> dict[str, DocState]:
        """Per document: its point ids, content hashes and chunk counts (no vectors)."""
        states: dict[str, DocState] = {}
        offset: str | None = None
        while True:
            points, offset = self.store.scroll(
                self.name, limit=2048, offset=offset, fields=_STATE_FIELDS
            )
            for p in points:
                payload = p.payload
                state = states.setdefault(str(payload.get("doc_id")), DocState())
                state.ids.add(p.id)
                state.hashes.add(str(payload.get("content_hash")))
                state.chunk_counts.add(int(payload.get("chunk_count", -1)))
                state.source = str(payload.get("source", ""))
            if offset is None:
                return states

    def points(self, ids: Sequence[str]) -> list[StoredPoint]:
        """The points with these ids, payloads and vectors included."""
        return self.store.retrieve(self.name, ids, vectors=True)

    def upsert(self, points: Sequence[NewPoint]) -> None:
        self.store.upsert(self.name, points)

    def delete(self, ids: Sequence[str]) -> None:
        self.store.delete(self.name, ids)


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
