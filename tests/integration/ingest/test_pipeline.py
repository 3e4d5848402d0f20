"""Idempotence and incrementality against embedded Qdrant with the real embedder."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.backends.base import NewPoint, VectorStore
from ingest.backends.client import ClientStore
from ingest.embedder import Embedder
from ingest.pipeline import Ingester, IngestOptions
from ingest.schema import point_id
from ingest.sparse import SparseEncoder
from ingest.store import Collection
from ragtune.errors import ConfigMismatch
from tests.conftest import make_chunker
from tests.fixtures.corpus import synthetic_records, write_jsonl, write_tree

C = "docs"


def _points(store: VectorStore, name: str = C) -> dict[str, dict[str, object]]:
    points, _ = store.scroll(name, limit=10_000)
    return {p.id: p.payload for p in points}


def test_first_run_writes_every_chunk_with_its_payload(ingester: Ingester, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "c")
    report = ingester.run([root], IngestOptions(collection=C))
    assert len(report.added) == 5
    points = _points(ingester.store)
    assert len(points) == report.chunks_written
    fruit = next(p for p in points.values() if p["file_name"] == "fruit.txt")
    doc_id = "fruit.txt"  # relative to the ingest root
    assert fruit["doc_id"] == doc_id
    assert fruit["source"] == doc_id
    assert fruit["chunk_index"] == 0
    assert fruit["title"] == "fruit"
    assert fruit["embedder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert fruit["chunker"] == {"size": 254, "overlap": 32, "version": 1}
    assert len(str(fruit["content_hash"])) == 64
    assert str(fruit["text"]).startswith("Apples grow")
    assert point_id(doc_id, 0) in points
    manifest = Collection(ingester.store, C).manifest() or {}
    assert manifest["ids"] == {"scheme": "relative-to-root", "roots": [root.resolve().as_posix()]}
    assert "in_progress" not in manifest
    assert manifest["embedder_dtype"] == ingester.embedder.dtype


def test_another_embedder_dtype_is_recorded_but_not_refused(
    ingester: Ingester, tmp_path: Path
) -> None:
    root = write_tree(tmp_path / "c")
    ingester.run([root], IngestOptions(collection=C))
    other = "bfloat16" if ingester.embedder.dtype == "float32" else "float32"
    ingester.embedder.dtype = other  # type: ignore[assignment]
    try:
        extra = write_jsonl(tmp_path / "more.jsonl", synthetic_records(1))
        report = ingester.run([root, extra], IngestOptions(collection=C))
    finally:
        ingester.embedder.dtype = "float32" if other == "bfloat16" else "bfloat16"  # type: ignore[assignment]
    assert report.added == ["d0"]
    assert (Collection(ingester.store, C).manifest() or {})["embedder_dtype"] == other


def test_rerun_over_unchanged_input_writes_nothing(ingester: Ingester, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "c")
    ingester.run([root], IngestOptions(collection=C))
    before = _points(ingester.store)
    report = ingester.run([root], IngestOptions(collection=C))
    assert report.wrote_nothing
    assert report.unchanged == 5
    assert report.chunks_written == 0
    assert _points(ingester.store) == before


def test_changed_document_has_its_chunks_replaced(ingester: Ingester, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", synthetic_records(6))
    ingester.run([path], IngestOptions(collection=C))
    records = synthetic_records(6)
    records[2]["text"] = "a much shorter replacement text"
    write_jsonl(path, records)
    report = ingester.run([path], IngestOptions(collection=C))
    assert report.replaced == ["d2"]
    assert report.unchanged == 5
    d2 = [p for p in _points(ingester.store).values() if p["doc_id"] == "d2"]
    assert len(d2) == 1
    assert d2[0]["text"] == "a much shorter replacement text"
    assert report.points_deleted >= 1


def test_deleted_files_are_pruned_only_with_prune(ingester: Ingester, tmp_path: Path) -> None:
    root = write_tree(tmp_path / "c")
    ingester.run([root], IngestOptions(collection=C))
    (root / "fruit.txt").unlink()
    report = ingester.run([root], IngestOptions(collection=C))
    assert report.removed == []
    assert "fruit.txt" in {p["source"] for p in _points(ingester.store).values()}
    # A file given by itself scopes --prune to its own documents.
    report = ingester.run([root / "guide.md"], IngestOptions(collection=C, prune=True))
    assert report.removed == []
    # A folder scopes it to every file document of the collection (ids are relative to it).
    report = ingester.run([root], IngestOptions(collection=C, prune=True))
    assert report.removed == ["fruit.txt"]
    sources = {str(p["source"]) for p in _points(ingester.store).values()}
    assert sources == {"guide.md", "space/notes.pdf", "tides.html", "space/voyager.txt"}


def test_prune_keeps_documents_of_a_partly_unreadable_file(
    ingester: Ingester, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", synthetic_records(3))
    ingester.run([path], IngestOptions(collection=C))
    lines = path.read_text().splitlines()
    lines[1] = "{broken"  # d1's line no longer parses
    path.write_text("\n".join(lines) + "\n")
    report = ingester.run([path], IngestOptions(collection=C, prune=True))
    assert report.removed == []
    assert report.kept_damaged == ["c.jsonl"]
    assert report.has_errors


def test_dry_run_reports_and_writes_nothing(ingester: Ingester, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", synthetic_records(5))
    ingester.run([path], IngestOptions(collection=C))
    before = _points(ingester.store)
    records = synthetic_records(5)[1:]  # d0 is gone
    records[0]["text"] = "changed"  # d1 changes
    records.append({"_id": "new", "text": "brand new"})
    write_jsonl(path, records)
    report = ingester.run([path], IngestOptions(collection=C, prune=True, dry_run=True))
    assert report.added == ["new"]
    assert report.replaced == ["d1"]
    assert report.removed == ["d0"]
    assert report.chunks_written == 2
    assert report.points_deleted > 0
    assert _points(ingester.store) == before
    # The real run does what the dry run said.
    real = ingester.run([path], IngestOptions(collection=C, prune=True))
    assert (real.added, real.replaced, real.removed) == (["new"], ["d1"], ["d0"])
    assert (real.chunks_written, real.points_deleted) == (2, report.points_deleted)


def test_dry_run_on_a_new_collection_creates_nothing(ingester: Ingester, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", synthetic_records(2))
    report = ingester.run([path], IngestOptions(collection=C, dry_run=True))
    assert report.added == ["d0", "d1"]
    assert not ingester.store.exists(C)


def test_other_chunker_settings_are_refused_naming_reindex(
    qdrant: VectorStore, embedder: Embedder, sparse: SparseEncoder, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", synthetic_records(4))
    Ingester(qdrant, embedder, sparse, make_chunker(embedder)).run(
        [path], IngestOptions(collection=C)
    )
    smaller = Ingester(qdrant, embedder, sparse, make_chunker(embedder, size=64))
    with pytest.raises(ConfigMismatch, match=r"chunker: .*'size': 254.*'size': 64.*--reindex"):
        smaller.run([path], IngestOptions(collection=C))
    report = smaller.run([path], IngestOptions(collection=C, reindex=True))
    assert report.reindexed
    assert Collection(qdrant, C).manifest()["chunker"]["size"] == 64  # type: ignore[index]
    assert all(
        p["chunker"] == {"size": 64, "overlap": 32, "version": 1} for p in _points(qdrant).values()
    )


def test_a_collection_not_made_by_ragtune_is_refused(
    embedder: Embedder, sparse: SparseEncoder, tmp_path: Path
) -> None:
    """Another tool's collection on a Qdrant (here qdrant-client's local mode, the same API)."""
    from qdrant_client import models

    store = ClientStore.local(":memory:")
    store.client.create_collection(
        C, vectors_config=models.VectorParams(size=3, distance=models.Distance.DOT)
    )
    ingester = Ingester(store, embedder, sparse, make_chunker(embedder))
    with pytest.raises(ConfigMismatch, match="not created by ragtune"):
        ingester.run([write_tree(tmp_path / "c")], IngestOptions(collection=C))


def test_duplicate_ids_across_files_keep_the_first(ingester: Ingester, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"_id": "same", "text": "from a"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"_id": "same", "text": "from b"}])
    report = ingester.run([a, b], IngestOptions(collection=C))
    assert report.load.duplicate_ids == [("same", b.resolve().as_posix(), a.resolve().as_posix())]
    assert report.has_errors
    assert [p["text"] for p in _points(ingester.store).values()] == ["from a"]


def test_interrupted_replace_is_finished_by_the_next_run(
    ingester: Ingester, tmp_path: Path
) -> None:
    """Points left by a run that died between writing new chunks and deleting old ones."""
    path = write_jsonl(tmp_path / "c.jsonl", synthetic_records(3, words=600))
    ingester.run([path], IngestOptions(collection=C))
    clean = _points(ingester.store)
    # Simulate the leftover: an extra stale chunk of d0 carrying an old content hash.
    extra = point_id("d0", 99)
    src = next(k for k, p in clean.items() if p["doc_id"] == "d0")
    (rec,) = ingester.store.retrieve(C, [src], vectors=True)
    assert rec.dense is not None
    assert rec.sparse is not None
    ingester.store.upsert(
        C,
        [
            NewPoint(
                id=extra,
                dense=rec.dense,
                sparse=rec.sparse,
                payload={**rec.payload, "content_hash": "old"},
            )
        ],
    )
    report = ingester.run([path], IngestOptions(collection=C))
    assert report.replaced == ["d0"]
    assert _points(ingester.store) == clean
