"""Moving documents stored under absolute-path ids (how ragtune identified files before ids
were relative to the ingest root) to their relative ids, without embedding them again.

Point ids derive from document ids, so new ids mean new points: each document's stored
vectors and payload are copied to its new point ids, and the old points are deleted only
after the copies are stored. A kill at any moment leaves either the old points complete, or
the new ones complete as well; the next run finishes the move from either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.backends.base import NewPoint
from ingest.documents import Document
from ingest.schema import point_id
from ingest.store import Collection, DocState


@dataclass
class Move:
    """A document whose points carry its absolute-path id, moved to its relative one."""

    doc: Document
    # The legacy points, deleted once their copies are stored.
    old_ids: list[str]
    # False when a killed migration stored the copies already.
    copy: bool
    # Points under the new id that a killed copy left and this copy does not overwrite.
    partial: set[str] = field(default_factory=set)

    def new_ids(self) -> set[str]:
        """The point ids the copy stores: one per legacy chunk (a complete document's points
        are chunks 0..n-1), under the new doc id."""
        if not self.copy:
            return set()
        return {point_id(self.doc.doc_id, i) for i in range(len(self.old_ids))}


def plan_migration(
    docs: list[Document], state: dict[str, DocState]
) -> tuple[dict[str, Move], dict[str, set[str]]]:
    """By new doc id: the documents still stored under their absolute-path id whose stored
    content is this run's (moved), and the legacy point ids of the others (changed since:
    embedded again, their old points deleted once the new ones are stored)."""
    moves: dict[str, Move] = {}
    legacy: dict[str, set[str]] = {}
    for doc in docs:
        old_id = doc.legacy_id()
        old = state.get(old_id)
        # Under the legacy scheme a point's source was the file's absolute path.
        if old is None or not doc.location or old.source != doc.location:
            continue
        current = state.get(doc.doc_id) if doc.doc_id != old_id else None
        if current is not None and current.is_complete(doc.doc_id, doc.content_hash()):
            moves[doc.doc_id] = Move(doc, sorted(old.ids), copy=False)
        elif old.is_complete(old_id, doc.legacy_hash()):
            partial = set(current.ids) if current is not None else set()
            moves[doc.doc_id] = Move(doc, sorted(old.ids), copy=True, partial=partial)
        else:
            legacy[doc.doc_id] = set(old.ids)
    return moves, legacy


def migrate(collection: Collection, moves: list[Move], batch_points: int) -> None:
    """Copy legacy points to their new ids with the new payload, then delete the old, about
    `batch_points` points at a time."""
    batch: list[Move] = []
    size = 0
    for move in moves:
        batch.append(move)
        size += len(move.old_ids)
        if size >= batch_points:
            _move(collection, batch)
            batch, size = [], 0
    if batch:
        _move(collection, batch)


def _move(collection: Collection, batch: list[Move]) -> None:
    copies: list[NewPoint] = []
    for move in batch:
        if not move.copy:
            continue
        doc = move.doc
        for record in collection.points(move.old_ids):
            payload = {
                **record.payload,
                "doc_id": doc.doc_id,
                "source": doc.source,
                "content_hash": doc.content_hash(),
            }
            if record.dense is None or record.sparse is None:
                continue
            copies.append(
                NewPoint(
                    id=point_id(doc.doc_id, int(payload["chunk_index"])),
                    dense=record.dense,
                    sparse=record.sparse,
                    payload=payload,
                )
            )
    collection.upsert(copies)
    # Only after the copies are stored: a kill in between leaves both, and the next run
    # finds the new points complete and deletes the old.
    kept = {p.id for p in copies}
    gone = {i for m in batch for i in (*m.old_ids, *m.partial)} - kept
    collection.delete(sorted(gone))
