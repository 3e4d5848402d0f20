"""Ingestion: plan what changed against what the collection holds, then write only that.

Safe to kill at any point: a document's new points are written before its stale ones are
deleted, and a document counts as unchanged only when exactly a clean run's points for its
current content are present, so a re-run finishes whatever an interrupted run left. While a
run writes, the collection's manifest carries an `in_progress` marker.

A full disk stops a run with an error before its next write (see `MIN_FREE_BYTES`), and a
re-run after freeing space finishes it like any interrupted run.

Document ids of files are relative to the ingest root, so the same folder ingested from
another checkout or a container path is the same documents. Collections written when ids were
absolute paths are migrated on the next ingest of the same root (ingest/migration.py).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from ingest.backends.base import NewPoint, VectorStore
from ingest.chunking import Chunk, Chunker
from ingest.documents import Document, LoadReport
from ingest.embedder import Embedder
from ingest.loaders import discover, load, relative_source
from ingest.migration import Move, migrate, plan_migration
from ingest.schema import SCHEMA_VERSION, point_id
from ingest.sparse import SparseEncoder
from ingest.store import Collection, DocState, compare_manifest
from ragtune.errors import UpstreamUnavailable

# How file documents are identified, as recorded in the manifest's `ids` (absent before).
ID_SCHEME = "relative-to-root"
# The free space an embedded store must keep to be written to. Qdrant Edge keeps segments in
# memory-mapped files, and a page it cannot get on a full disk ends the process with SIGBUS
# instead of an error (seen on a full tmpfs): a run stops before its next write with an error
# below this, far above what one write batch takes (~1 MB for 256 chunks).
MIN_FREE_BYTES = 64 * 1024 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class IngestOptions:
    collection: str
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    prune: bool = False
    dry_run: bool = False
    reindex: bool = False
    progress: bool = False


@dataclass
class IngestReport:
    """What a run did (or, with --dry-run, would do)."""

    collection: str
    dry_run: bool
    reindexed: bool = False
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    # Documents moved from absolute-path ids to relative ones, without embedding them again.
    migrated: list[str] = field(default_factory=list)
    chunks_written: int = 0
    points_deleted: int = 0
    seconds: float = 0.0
    load: LoadReport = field(default_factory=LoadReport)
    # Sources whose documents --prune left alone because the file was only partly read.
    kept_damaged: list[str] = field(default_factory=list)

    @property
    def wrote_nothing(self) -> bool:
        return not (self.added or self.replaced or self.removed or self.reindexed or self.migrated)

    @property
    def has_errors(self) -> bool:
        return bool(self.load.line_errors or self.load.duplicate_ids)


@dataclass
class _Pending:
    doc: Document
    chunks: list[Chunk]
    # The point ids the collection holds for this document now.
    stale: set[str]

    def outdated(self) -> list[str]:
        """Old point ids that the new chunks do not overwrite."""
        fresh = {point_id(self.doc.doc_id, c.index) for c in self.chunks}
        return sorted(self.stale - fresh)


class Ingester:
    """Builds and keeps collections in step with a set of files."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        sparse: SparseEncoder,
        chunker: Chunker,
        write_batch: int = 256,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.sparse = sparse
        self.chunker = chunker
        self.write_batch = write_batch
        self.min_free_bytes = min_free_bytes

    def manifest(self) -> dict[str, Any]:
        """The settings a collection remembers; ingesting with others is refused."""
        return {
            "schema": SCHEMA_VERSION,
            "embedder": {"model": self.embedder.name, "dim": self.embedder.dim},
            "chunker": self.chunker.info(),
            "sparse": self.sparse.info(),
            # Recorded, not compared: float32 and bfloat16 vectors agree within cosine 0.9999,
            # so a collection moves between machines without --reindex.
            "embedder_dtype": self.embedder.dtype,
        }

    def run(self, paths: Sequence[str | Path], opts: IngestOptions) -> IngestReport:
        try:
            return self._run(paths, opts)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            raise self._full(f"writing failed ({exc})") from exc

    def _room(self) -> None:
        """Raise before a write when the embedded store's disk is (nearly) full."""
        if not self.store.in_process or self.store.where == ":memory:":
            return  # a server's disk is the server's: it answers a full disk with an error
        free = shutil.disk_usage(self.store.where).free
        if free < self.min_free_bytes:
            raise self._full(
                f"{free // 1024} KiB free, and an ingest keeps at least "
                f"{self.min_free_bytes // 1024} KiB"
            )

    def _full(self, detail: str) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"the disk under the embedded Qdrant at {self.store.where} is full: {detail}. Free "
            f"space there (or set RAGTUNE_DATA_DIR / RAGTUNE_QDRANT__PATH to a larger disk), then "
            f"run the same command again: it finishes what this run left"
        )

    def _run(self, paths: Sequence[str | Path], opts: IngestOptions) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport(collection=opts.collection, dry_run=opts.dry_run)
        collection = Collection(self.store, opts.collection)
        roots = [Path(p).resolve() for p in paths]
        files = discover(paths, opts.include, opts.exclude, report.load)
        docs = self._unique(load(files, report.load), report.load)

        state: dict[str, DocState] = {}
        stored: dict[str, Any] | None = None
        # A rebuild goes into a new collection that replaces the old at once when complete:
        # the old one serves until then, and stays whole if the rebuild fails or is killed.
        target = collection
        if collection.exists():
            if opts.reindex:
                report.reindexed = True
                target = Collection(self.store, self.store.staging_name(collection.name))
            else:
                stored = collection.manifest()
                compare_manifest(collection.name, stored, self.manifest())
                state = collection.state()

        moves, legacy = plan_migration(docs, state)
        pending = self._plan(docs, state, moves, legacy, report)
        if opts.prune:
            handled = {d.legacy_id() for d in docs if d.doc_id in legacy or d.doc_id in moves}
            self._plan_prune(roots, docs, state, handled, report)
        removed_ids = [i for d in report.removed for i in sorted(state[d].ids)]
        deleted = len(removed_ids) + sum(len(p.outdated()) for p in pending)
        deleted += sum(len(set(m.old_ids) - m.new_ids()) for m in moves.values())
        if opts.dry_run:
            for item in pending:
                item.chunks = self.chunker.split(item.doc)
                report.chunks_written += len(item.chunks)
        elif target is not collection:
            self._room()
            self._rebuild(target, collection, pending, roots, opts.progress, report)
        else:
            final = self._final_manifest(roots)
            if pending or removed_ids or moves:
                self._room()
                marker = {
                    **(stored or final),
                    "in_progress": {
                        "roots": final["ids"]["roots"],
                        "started": datetime.now(UTC).isoformat(timespec="seconds"),
                    },
                }
                self._save_manifest(collection, stored is not None, marker)
                migrate(collection, list(moves.values()), self.write_batch)
                self._write(collection, pending, opts.progress, report)
                collection.delete(removed_ids)
                collection.set_manifest(final)
            elif stored is None or stored.get("ids", {}).get("scheme") != ID_SCHEME:
                self._save_manifest(collection, stored is not None, final)
        report.points_deleted = deleted
        report.seconds = time.perf_counter() - started
        return report

    def _final_manifest(self, roots: Sequence[Path]) -> dict[str, Any]:
        return {
            **self.manifest(),
            "ids": {"scheme": ID_SCHEME, "roots": [r.as_posix() for r in roots]},
        }

    def _rebuild(
        self,
        staging: Collection,
        collection: Collection,
        pending: list[_Pending],
        roots: Sequence[Path],
        progress: bool,
        report: IngestReport,
    ) -> None:
        """Every document into `staging`, then `staging` published as `collection`."""
        final = self._final_manifest(roots)
        staging.create({**final, "in_progress": {"rebuild_of": collection.name}}, self.embedder.dim)
        try:
            self._write(staging, pending, progress, report)
            staging.set_manifest(final)
            self.store.publish(staging.name, collection.name)
        except BaseException:
            # The old collection is untouched; the half-built one goes (a kill leaves it for
            # the store to remove: Edge when it opens, a server's by its `.build-` name).
            with contextlib.suppress(Exception):
                staging.drop()
            raise

    def _save_manifest(
        self, collection: Collection, exists: bool, manifest: dict[str, Any]
    ) -> None:
        if exists:
            collection.set_manifest(manifest)
        else:
            collection.create(manifest, self.embedder.dim)

    @staticmethod
    def _unique(docs: Any, load_report: LoadReport) -> list[Document]:
        first: dict[str, str] = {}
        out = []
        for doc in docs:
            # Where the files are, which the relative sources do not say.
            where = doc.location or doc.source
            if doc.doc_id in first:
                load_report.duplicate_ids.append((doc.doc_id, where, first[doc.doc_id]))
                continue
            first[doc.doc_id] = where
            out.append(doc)
        return out

    @staticmethod
    def _plan(
        docs: list[Document],
        state: dict[str, DocState],
        moves: dict[str, Move],
        legacy: dict[str, set[str]],
        report: IngestReport,
    ) -> list[_Pending]:
        pending = []
        for doc in docs:
            known = state.get(doc.doc_id)
            old = legacy.get(doc.doc_id, set())
            if doc.doc_id in moves:
                report.migrated.append(doc.doc_id)
                report.unchanged += 1
            elif known is None:
                report.added.append(doc.doc_id)
                pending.append(_Pending(doc, [], set(old)))
            elif known.is_complete(doc.doc_id, doc.content_hash()) and not old:
                report.unchanged += 1
            else:
                report.replaced.append(doc.doc_id)
                pending.append(_Pending(doc, [], set(known.ids) | old))
        return pending

    @staticmethod
    def _plan_prune(
        roots: Sequence[Path],
        docs: list[Document],
        state: dict[str, DocState],
        handled: set[str],
        report: IngestReport,
    ) -> None:
        """Documents of the collection that the roots no longer hold.

        Ids are relative to the root, so a folder's scope is every file document of the
        collection, and a file's scope its own documents; documents still stored under an
        absolute path are in scope when that path is under a root.
        """
        seen = {d.doc_id for d in docs} | handled
        damaged = set()
        for path in report.load.damaged_sources():
            damaged.add(path)
            for root in roots:
                if Path(path) == root or root in Path(path).parents:
                    damaged.add(relative_source(Path(path), root))
        for doc_id, known in sorted(state.items()):
            if doc_id in seen or not any(_in_scope(known.source, r) for r in roots):
                continue
            if known.source in damaged:
                if known.source not in report.kept_damaged:
                    report.kept_damaged.append(known.source)
                continue
            report.removed.append(doc_id)

    def _write(
        self,
        collection: Collection,
        pending: list[_Pending],
        progress: bool,
        report: IngestReport,
    ) -> None:
        bar = tqdm(total=len(pending), unit="doc", disable=not progress, dynamic_ncols=True)
        started = time.perf_counter()
        # One writer thread: Qdrant writes overlap the next batch's embedding, in order.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-writer") as writer:
            in_flight: list[Future[None]] = []
            batch: list[_Pending] = []
            size = 0
            for item in pending:
                item.chunks = self.chunker.split(item.doc)
                batch.append(item)
                size += len(item.chunks)
                if size >= self.write_batch:
                    self._room()
                    in_flight.append(self._flush(collection, batch, writer))
                    report.chunks_written += size
                    self._tick(bar, len(batch), report.chunks_written, started)
                    batch, size = [], 0
                    # Keep at most two batches queued so memory stays flat.
                    while len(in_flight) > 2:
                        in_flight.pop(0).result()
            if batch:
                self._room()
                in_flight.append(self._flush(collection, batch, writer))
                report.chunks_written += size
                self._tick(bar, len(batch), report.chunks_written, started)
            for fut in in_flight:
                fut.result()
        bar.close()

    @staticmethod
    def _tick(bar: tqdm[Any], docs: int, chunks: int, started: float) -> None:
        elapsed = max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(chunks=chunks, chunks_per_s=f"{chunks / elapsed:.1f}", refresh=False)
        bar.update(docs)

    def _flush(
        self, collection: Collection, batch: list[_Pending], writer: ThreadPoolExecutor
    ) -> Future[None]:
        texts = [c.embed_text for p in batch for c in p.chunks]
        dense = self.embedder.encode(texts)
        points = []
        row = 0
        for item in batch:
            for chunk in item.chunks:
                points.append(
                    NewPoint(
                        id=point_id(item.doc.doc_id, chunk.index),
                        dense=dense[row].tolist(),
                        sparse=self.sparse.encode_document(chunk.embed_text),
                        payload=self._payload(item, chunk),
                    )
                )
                row += 1
        stale = [i for p in batch for i in p.outdated()]

        def write() -> None:
            collection.upsert(points)
            # Only after the new points are stored: a kill in between leaves extra points
            # that the next run recognises by their old content hash.
            collection.delete(stale)

        return writer.submit(write)

    def _payload(self, item: _Pending, chunk: Chunk) -> dict[str, Any]:
        doc = item.doc
        return {
            "text": chunk.text,
            "doc_id": doc.doc_id,
            "source": doc.source,
            "title": doc.title,
            "chunk_index": chunk.index,
            "chunk_count": len(item.chunks),
            "headers": list(chunk.headers),
            "content_hash": doc.content_hash(),
            "file_type": doc.file_type,
            **doc.file_meta,
            "meta": doc.meta,
            "embedder": self.embedder.name,
            "chunker": self.chunker.info(),
        }


def _in_scope(source: str, root: Path) -> bool:
    """Whether `--prune` of `root` may remove a document read from `source`."""
    if PurePosixPath(source).is_absolute():
        return source == root.as_posix() or source.startswith(root.as_posix() + "/")
    return source == root.name if root.is_file() else True
