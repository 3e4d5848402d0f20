"""`ragtune store migrate`: collections that qdrant-client's local mode wrote (the embedded
store before Qdrant Edge) copied into Qdrant Edge without embedding anything again.

Each collection is copied into a staging collection (points, both vectors, payloads, the
manifest), its count and ids checked against the source, then published under its name in one
step; a kill at any moment leaves the source untouched and, at worst, a staging folder that
the Edge store removes when it next opens. When every collection is copied, the local mode's
files move to `local-mode-backup/` beside the Edge store (delete it when satisfied).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingest.backends.base import NewPoint, VectorStore
from ingest.backends.client import ClientStore
from ingest.backends.edge import EdgeStore
from ingest.store import local_mode_collections
from ragtune.errors import InvalidInput, NotFound, RagtuneError

BACKUP_DIR = "local-mode-backup"
_BATCH = 1024


@dataclass
class Migrated:
    name: str
    points: int
    # "copied", "already copied" or why it was skipped.
    outcome: str


def migrate_local_store(
    location: str,
    edge: EdgeStore,
    names: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> list[Migrated]:
    """Copy the local-mode collections at `location` (all, or `names`) into `edge`."""
    found = local_mode_collections(location)
    if not found:
        raise NotFound(
            f"no collections of qdrant-client's local mode at {location} (its meta.json lists "
            f"none): nothing to migrate"
        )
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise InvalidInput(
            f"{', '.join(unknown)}: not in the local-mode store at {location} "
            f"(it holds {', '.join(found)})"
        )
    local = ClientStore.local(location)
    results: list[Migrated] = []
    try:
        for name in names or found:
            results.append(_copy(local, edge, name, progress))
    finally:
        local.close()
    if not names or set(names) == set(found):
        _set_aside(Path(location))
        progress(
            f"the local mode's files are in {Path(location) / BACKUP_DIR}; delete it once the "
            f"migrated collections answer as before"
        )
    edge.legacy = []
    return results


def _copy(
    local: ClientStore, edge: EdgeStore, name: str, progress: Callable[[str], None]
) -> Migrated:
    manifest = local.manifest(name)
    expected = local.count(name)
    if manifest is None:
        return Migrated(name, expected, "skipped: not made by ragtune (no manifest)")
    if edge.exists(name):
        if edge.count(name) == expected and edge.manifest(name) == manifest:
            return Migrated(name, expected, "already copied")
        # Ingested into Edge since the switch: newer than the old store's copy, kept.
        return Migrated(
            name,
            expected,
            "skipped: Qdrant Edge already has another collection of that name (kept; rename "
            "or drop one of them)",
        )
    dim = int((manifest.get("embedder") or {}).get("dim") or 0)
    staging = edge.staging_name(name)
    progress(f"copying {name!r}: {expected} points")
    try:
        if dim <= 0:
            raise InvalidInput(f"{name}: its manifest records no embedder dimension")
        edge.create(staging, dim, manifest)
        ids = _copy_points(local, edge, name, staging)
        copied = edge.count(staging)
        if copied != expected or len(ids) != expected:
            raise InvalidInput(
                f"{name}: {copied} points copied of {expected}; the local-mode store was left "
                f"as it is. Run `ragtune store migrate` again"
            )
        edge.publish(staging, name)
    except BaseException:
        if edge.exists(staging):
            edge.drop(staging)
        raise
    if edge.optimize(name, progress):
        progress(f"{name!r}: vector index built")
    return Migrated(name, expected, "copied")


def _copy_points(local: VectorStore, edge: VectorStore, name: str, staging: str) -> set[str]:
    ids: set[str] = set()
    offset: str | None = None
    while True:
        points, offset = local.scroll(name, limit=_BATCH, offset=offset, vectors=True)
        batch = []
        for p in points:
            if p.dense is None or p.sparse is None:
                raise InvalidInput(
                    f"{name}: point {p.id} lacks ragtune's dense or sparse vector; rebuild the "
                    f"collection with `ragtune ingest PATH --collection {name} --reindex`"
                )
            batch.append(NewPoint(p.id, p.dense, p.sparse, p.payload))
            ids.add(p.id)
        edge.upsert(staging, batch)
        if offset is None:
            return ids


def _set_aside(root: Path) -> None:
    """Move the local mode's files (meta.json, collection/) out of the way, kept."""
    backup = root / BACKUP_DIR
    backup.mkdir(exist_ok=True)
    for entry in ("collection", "meta.json", ".lock"):
        source = root / entry
        if source.exists():
            target = backup / entry
            if target.exists():
                raise RagtuneError(f"{target} exists already; move it away and run again")
            shutil.move(str(source), str(target))
