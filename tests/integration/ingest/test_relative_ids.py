"""Document ids relative to the ingest root, and the migration of collections whose ids are
absolute paths (as ragtune wrote them before), against embedded Qdrant."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from qdrant_client import models

from ingest.backends.base import NewPoint, VectorStore
from ingest.documents import LoadReport
from ingest.embedder import Embedder
from ingest.loaders import discover, load
from ingest.pipeline import Ingester, IngestOptions
from ingest.schema import point_id
from ingest.search import Retriever
from ingest.sparse import SparseEncoder
from ingest.store import Collection
from tests.conftest import make_chunker
from tests.fixtures.collections import Snapshot, differences, snapshot
from tests.fixtures.corpus import synthetic_records, write_jsonl, write_tree

C = "docs"


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.texts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, texts: list[str]) -> Any:
        self.texts += len(texts)
        return self.inner.encode(texts)


def _ingester(client: VectorStore, embedder: Any, sparse: SparseEncoder) -> Ingester:
    return Ingester(client, embedder, sparse, make_chunker(embedder), write_batch=8)


def _snapshot(client: VectorStore, name: str = C) -> Snapshot:
    return snapshot(client, name)


def _same(a: Snapshot, b: Snapshot) -> None:
    assert differences(a, b, atol=1e-6) == []


def _make_legacy(client: VectorStore, root: Path) -> None:
    """Rewrite a collection as ragtune wrote it when a file's id and source were its absolute
    path (JSONL records kept their `_id`), with no id scheme in the manifest."""
    report = LoadReport()
    docs = {d.doc_id: d for d in load(discover([root]), report)}
    points, _ = client.scroll(C, limit=10_000, vectors=True)
    old = []
    for p in points:
        payload = dict(p.payload)
        doc = docs[payload["doc_id"]]
        payload.update(doc_id=doc.legacy_id(), source=doc.location, content_hash=doc.legacy_hash())
        assert p.dense is not None
        assert p.sparse is not None
        old.append(
            NewPoint(
                id=point_id(doc.legacy_id(), payload["chunk_index"]),
                dense=p.dense,
                sparse=p.sparse,
                payload=payload,
            )
        )
    client.delete(C, [p.id for p in points])
    client.upsert(C, old)
    manifest = Collection(client, C).manifest() or {}
    manifest.pop("ids")
    Collection(client, C).set_manifest(manifest)


def _corpus(where: Path) -> Path:
    root = write_tree(where)
    write_jsonl(root / "records.jsonl", synthetic_records(4, words=300))
    return root


def test_the_same_folder_at_another_path_writes_nothing(ingester: Ingester, tmp_path: Path) -> None:
    first = _corpus(tmp_path / "checkout-a" / "docs")
    second = tmp_path / "container" / "srv" / "docs"
    shutil.copytree(first, second)
    ingester.run([first], IngestOptions(collection=C))
    before = _snapshot(ingester.store)
    report = ingester.run([second], IngestOptions(collection=C, prune=True))
    assert report.wrote_nothing
    assert (report.unchanged, report.chunks_written, report.points_deleted) == (9, 0, 0)
    _same(_snapshot(ingester.store), before)


def test_a_collection_with_absolute_ids_is_migrated_without_embedding(
    qdrant: VectorStore, embedder: Embedder, sparse: SparseEncoder, tmp_path: Path
) -> None:
    root = _corpus(tmp_path / "docs")
    _ingester(qdrant, embedder, sparse).run([root], IngestOptions(collection=C))
    clean = _snapshot(qdrant)
    retriever = Retriever(qdrant, embedder, sparse, C)
    hits = [h.text for h in retriever.search("How do apples grow?", top_k=5)]
    _make_legacy(qdrant, root)
    legacy = _snapshot(qdrant)
    assert len(legacy) == len(clean)
    assert not set(legacy) & {k for k, v in clean.items() if v[0]["file_type"] != "jsonl"}
    assert {v[0]["doc_id"] for v in legacy.values()} >= {(root / "fruit.txt").resolve().as_posix()}

    counting = CountingEmbedder(embedder)
    dry = _ingester(qdrant, counting, sparse).run([root], IngestOptions(collection=C, dry_run=True))
    assert len(dry.migrated) == 9
    _same(_snapshot(qdrant), legacy)
    report = _ingester(qdrant, counting, sparse).run([root], IngestOptions(collection=C))

    assert counting.texts == 0
    assert sorted(report.migrated) == sorted(
        ["fruit.txt", "guide.md", "tides.html", "space/notes.pdf", "space/voyager.txt"]
        + [f"d{i}" for i in range(4)]
    )
    assert (report.added, report.replaced, report.chunks_written) == ([], [], 0)
    # Exactly a clean run's points: ids, payloads and vectors.
    _same(_snapshot(qdrant), clean)
    assert (Collection(qdrant, C).manifest() or {})["ids"]["scheme"] == "relative-to-root"
    assert [h.text for h in retriever.search("How do apples grow?", top_k=5)] == hits
    again = _ingester(qdrant, counting, sparse).run([root], IngestOptions(collection=C))
    assert again.wrote_nothing


def test_a_killed_migration_is_finished_by_the_next_run(
    qdrant: VectorStore, embedder: Embedder, sparse: SparseEncoder, tmp_path: Path
) -> None:
    root = _corpus(tmp_path / "docs")
    _ingester(qdrant, embedder, sparse).run([root], IngestOptions(collection=C))
    clean = _snapshot(qdrant)
    _make_legacy(qdrant, root)
    # A run killed after storing some copies and before deleting their originals: both are
    # there, and one more document was copied only in part.
    fruit = (root / "fruit.txt").resolve().as_posix()
    guide = (root / "guide.md").resolve().as_posix()
    copies = [
        _point(k, v)
        for k, v in clean.items()
        if v[0]["doc_id"] == "fruit.txt"
        or (v[0]["doc_id"] == "guide.md" and v[0]["chunk_index"] == 0)
    ]
    qdrant.upsert(C, copies)
    counting = CountingEmbedder(embedder)
    report = _ingester(qdrant, counting, sparse).run(
        [root], IngestOptions(collection=C, prune=True)
    )
    assert counting.texts == 0
    assert report.removed == []
    assert {"fruit.txt", "guide.md"} <= set(report.migrated)
    _same(_snapshot(qdrant), clean)
    assert not {fruit, guide} & {v[0]["doc_id"] for v in _snapshot(qdrant).values()}


def test_a_legacy_document_changed_since_is_embedded_again_under_its_new_id(
    qdrant: VectorStore, embedder: Embedder, sparse: SparseEncoder, tmp_path: Path
) -> None:
    root = _corpus(tmp_path / "docs")
    _ingester(qdrant, embedder, sparse).run([root], IngestOptions(collection=C))
    _make_legacy(qdrant, root)
    (root / "fruit.txt").write_text("Pears ripen off the tree.")
    (root / "tides.html").unlink()
    report = _ingester(qdrant, embedder, sparse).run(
        [root], IngestOptions(collection=C, prune=True)
    )
    assert report.added == ["fruit.txt"]
    assert report.removed == [(root / "tides.html").resolve().as_posix()]
    assert len(report.migrated) == 7
    payloads = [v[0] for v in _snapshot(qdrant).values()]
    assert {p["doc_id"] for p in payloads if p["file_type"] != "jsonl"} == {
        "fruit.txt",
        "guide.md",
        "space/notes.pdf",
        "space/voyager.txt",
    }
    assert all(not str(p["source"]).startswith("/") for p in payloads)
    assert [p["text"] for p in payloads if p["doc_id"] == "fruit.txt"] == [
        "Pears ripen off the tree."
    ]


def _point(point_id: str, entry: tuple[Any, ...]) -> NewPoint:
    payload, dense, indices, values = entry
    return NewPoint(
        id=point_id,
        dense=dense.tolist(),
        sparse=models.SparseVector(indices=list(indices), values=list(values)),
        payload=payload,
    )
