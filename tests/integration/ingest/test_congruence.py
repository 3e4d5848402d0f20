"""Congruence, as qdrant-client tests its local mode against the server: the same ingest into
Qdrant Edge and into qdrant-client's local mode gives the same points, payloads and vectors,
and every kind of retrieval ranks the same points with the same scores.

Stores may order equal scores differently, and hybrid search fuses prefetch positions; how
rankings are compared despite that is tests/fixtures/rankings.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from qdrant_client.models import SparseVector

from ingest.backends.base import Filters, Mode, NewPoint, ScoredPoint, Search, VectorStore
from ingest.backends.client import ClientStore
from ingest.backends.edge import EdgeStore
from ingest.embedder import Embedder
from ingest.pipeline import Ingester, IngestOptions
from ingest.schema import point_id
from ingest.search import Retriever
from ingest.sparse import SparseEncoder
from tests.conftest import make_chunker
from tests.fixtures.collections import Snapshot, differences, snapshot
from tests.fixtures.corpus import MARKDOWN, synthetic_records, write_jsonl, write_tree
from tests.fixtures.rankings import (
    COLLECTION,
    EVERYTHING,
    Ranking,
    close,
    deepened,
    prefetch_tie_differences,
    ranked,
    score_groups,
    search_differences,
    tie_differences,
)

C = COLLECTION
MODES: tuple[Mode, ...] = ("dense", "sparse", "hybrid")
LIMIT = 10
TOPICS = {
    "bees.txt": "Honey bees dance to tell the hive where flowers are. A colony keeps one queen.",
    "volcano.txt": "Volcanoes erupt when magma rises through the crust. Lava cools into basalt.",
    "chess.md": "# Chess openings\n\nThe Sicilian answers e4 with c5. Castling protects the king.",
    "baking.md": "# Baking\n\nYeast ferments sugar and makes bread dough rise in a warm kitchen.",
    "rail.txt": "Steam locomotives burned coal to boil water. Railways crossed the continent.",
    "coffee.txt": "Coffee beans are roasted to bring out their flavour. Espresso is brewed hot.",
    "whales.txt": "Blue whales are the largest animals ever. They eat krill by filtering water.",
    # Two documents with one text: equal vectors, so equal scores in every mode.
    "copy-a.txt": "The lighthouse keeper trimmed the lamp wick every evening before the storm.",
    "copy-b.txt": "The lighthouse keeper trimmed the lamp wick every evening before the storm.",
    "garden.md": "# Garden\n\nTomatoes need sun and water. Prune apple trees in late winter.",
    "python.md": "# Python\n\nA list comprehension builds a list from an iterable at once.",
    "moon.txt": "The moon's gravity pulls the oceans and raises the tides twice a day.",
}
QUERIES = (
    "apple trees in winter",
    "how do bees communicate",
    "molten rock eruption",
    "chess king safety",
    "bread yeast",
    "old steam trains",
    "espresso",
    "largest animal in the ocean",
    "lighthouse lamp",
    "python list",
    "moon gravity tides",
    "space probes",
    "high tide harbour",
    "comets",
    "soup onions",
    "kabar lodun",
    "mibar kemlum tejax",
    "pohin sifel",
    "rudun tegor lofel",
    "nejax",
    "sijax tekem and the apple orchard",
    "sibar pofel",
    "tedun nehin rugor",
    "kalum",
    "pojax mifel sidun",
)
FILTERS: tuple[Filters, ...] = (
    {"file_type": "jsonl"},
    {"doc_id": "d3"},
    {"file_type": ["txt", "md", "html"]},
    {"doc_id": ["d1", "d2", "d3", "d7", "topics/moon.txt", "fruit.txt"]},
    {"file_type": "txt"},
    {"doc_id": ["topics/copy-a.txt", "topics/copy-b.txt", "guide.md"]},
)

# -- the corpus and the stores ---------------------------------------------------------------


def write_corpus(root: Path) -> Path:
    """47 documents: the five-file tree, twelve short topics, thirty random-word records."""
    write_tree(root)
    (root / "topics").mkdir()
    for name, text in TOPICS.items():
        (root / "topics" / name).write_text(text)
    records = synthetic_records(30, words=40)
    records[7]["text"] = records[3]["text"]  # equal texts again, among the records
    write_jsonl(root / "records.jsonl", records)
    return root


class SharedEmbeddings(Embedder):
    """The real embedder, each batch embedded once for both stores: the stores under
    comparison get the same vectors, and the module pays for one embedding pass."""

    def __init__(self, real: Embedder) -> None:
        super().__init__(real._model, real.name, real.batch_size, real.dtype, real.threads)
        self._done: dict[tuple[str, ...], npt.NDArray[np.float32]] = {}

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        key = tuple(texts)
        if key not in self._done:
            self._done[key] = super().encode(texts)
        return self._done[key]


@pytest.fixture(scope="module")
def shared(embedder: Embedder) -> Embedder:
    return SharedEmbeddings(embedder)


def make_stores() -> dict[str, VectorStore]:
    return {"edge": EdgeStore(":memory:"), "local": ClientStore.local(":memory:")}


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory, shared: Embedder, sparse: SparseEncoder
) -> Iterator[dict[str, VectorStore]]:
    """Both stores with collection `kb` ingested from one corpus, once for the module."""
    root = write_corpus(tmp_path_factory.mktemp("congruence") / "corpus")
    made = make_stores()
    for store in made.values():
        report = Ingester(store, shared, sparse, make_chunker(shared)).run(
            [root], IngestOptions(collection=C)
        )
        assert len(report.added) == 47
    yield made
    for store in made.values():
        store.close()


@pytest.fixture(scope="module")
def vectors(
    embedder: Embedder, sparse: SparseEncoder
) -> dict[str, tuple[list[float], SparseVector]]:
    dense = embedder.encode(QUERIES)
    return {q: (dense[i].tolist(), sparse.encode_query(q)) for i, q in enumerate(QUERIES)}


def make_search(
    vectors: dict[str, tuple[list[float], SparseVector]],
    query: str,
    mode: Mode,
    *,
    limit: int = LIMIT,
    filters: Filters | None = None,
    threshold: float | None = None,
) -> Search:
    """The search Retriever sends for `query` (hybrid fuses 3 candidates a side per result)."""
    dense, sparse = vectors[query]
    return Search(
        mode=mode,
        limit=limit,
        dense=dense,
        sparse=sparse,
        filters=filters or {},
        depth=3 * limit,
        score_threshold=threshold,
    )


# -- the comparing helpers themselves --------------------------------------------------------


def test_tie_differences_allow_reordered_ties_and_nothing_else() -> None:
    a = [("x", 0.9), ("y", 0.5), ("z", 0.5), ("w", 0.1)]
    assert tie_differences(a, [("x", 0.9), ("z", 0.5), ("y", 0.50001), ("w", 0.1)], 10) == []
    assert tie_differences(a, [("x", 0.9), ("y", 0.5), ("z", 0.5), ("v", 0.1)], 10)
    assert tie_differences(a, [("x", 0.9), ("y", 0.5), ("z", 0.5), ("w", 0.2)], 10)
    assert tie_differences(a, [("y", 0.9), ("x", 0.5), ("z", 0.5), ("w", 0.1)], 10)
    assert tie_differences(a, a[:3], 10)
    # A tie cut by the limit: each side's members must belong to the other's whole tie.
    deep = [("x", 0.9), ("y", 0.5), ("z", 0.5), ("u", 0.5), ("w", 0.1)]
    assert tie_differences(a[:2], [("x", 0.9), ("u", 0.5)], 2, deep, deep) == []
    assert tie_differences(a[:2], [("x", 0.9), ("w", 0.5)], 2, deep, deep)
    assert tie_differences(a[:2], [("x", 0.9), ("u", 0.5)], 2)


def test_rrf_over_tied_prefetches_is_explained_and_real_differences_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sparse vectors all alike: the sparse prefetch is one big tie, which stores may order
    differently; the fused rankings then differ, as RRF over each store's own prefetches."""
    rng = random.Random(0)
    points = []
    for i in range(60):
        dense = [rng.uniform(-1, 1) for _ in range(8)]
        sparse = SparseVector(indices=[i % 7, 100], values=[1.0, 0.5])
        points.append(NewPoint(point_id("d", i), dense, sparse, {"doc_id": f"d{i % 10}"}))
    made = make_stores()
    try:
        for store in made.values():
            store.create(C, 8, {"schema": 1})
            store.upsert(C, points)
        query = SparseVector(indices=[1, 100], values=[1.0, 1.0])
        for filters in ({}, {"doc_id": ["d1", "d3", "d5"]}):
            search = Search(
                mode="hybrid",
                limit=10,
                dense=[rng.uniform(-1, 1) for _ in range(8)],
                sparse=query,
                filters=filters,
                depth=10,
            )
            assert search_differences(made, search) == []
        # Fused scores that are not RRF over the store's own prefetches are not excused.
        edge = made["edge"]
        real_search = edge.search

        def off(name: str, s: Search) -> list[ScoredPoint]:
            found = real_search(name, s)
            return [replace(p, score=p.score * 0.9) for p in found] if s.mode == "hybrid" else found

        monkeypatch.setattr(edge, "search", off)
        assert search_differences(made, search)
    finally:
        for store in made.values():
            store.close()


# -- points ----------------------------------------------------------------------------------


def test_same_points_payloads_vectors_and_manifest(stores: dict[str, VectorStore]) -> None:
    edge, local = stores["edge"], stores["local"]
    left, right = snapshot(edge, C), snapshot(local, C)
    assert len(left) >= 47
    assert differences(left, right) == []
    assert edge.manifest(C) == local.manifest(C) is not None
    assert edge.names() == local.names() == [C]
    assert edge.count(C) == local.count(C) == len(left)


# -- rankings --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_rankings_agree(
    stores: dict[str, VectorStore],
    vectors: dict[str, tuple[list[float], SparseVector]],
    mode: Mode,
) -> None:
    found = {}
    for query in QUERIES:
        search = make_search(vectors, query, mode)
        assert ranked(stores["edge"], search), query
        found[query] = search_differences(stores, search)
    assert {q: d for q, d in found.items() if d} == {}


@pytest.mark.parametrize("mode", MODES)
def test_filtered_rankings_agree(
    stores: dict[str, VectorStore],
    vectors: dict[str, tuple[list[float], SparseVector]],
    mode: Mode,
) -> None:
    found = {}
    answered = 0
    for i, query in enumerate(QUERIES):
        filters = FILTERS[i % len(FILTERS)]
        search = make_search(vectors, query, mode, filters=filters)
        for p in stores["edge"].search(C, search):
            for key, allowed in filters.items():
                assert p.payload[key] in (allowed if isinstance(allowed, list) else [allowed])
        answered += bool(ranked(stores["edge"], search))
        found[(query, str(filters))] = search_differences(stores, search)
    assert {q: d for q, d in found.items() if d} == {}
    # Sparse finds only chunks that share a term with the query, of which a filter leaves few.
    assert answered >= (8 if mode == "sparse" else len(QUERIES))


def _best_per_document(points: list[ScoredPoint]) -> Ranking:
    best: dict[str, float] = {}
    for p in points:
        best.setdefault(str(p.payload["doc_id"]), p.score)
    return list(best.items())


def _per_document_tie_differences(
    stores: dict[str, VectorStore],
    first_pass: Search,
    hits: dict[str, Ranking],
    deep: dict[str, Ranking],
    top_k: int,
) -> list[str]:
    """Per-document hybrid rankings that differ are explained only by the chunk ranking's
    prefetch ties, with each store's documents taken in the order of its own chunks."""
    (_, a), (_, b) = stores.items()
    chunks = tie_differences(ranked(a, first_pass), ranked(b, first_pass), first_pass.limit)
    if not chunks:
        return [f"the chunk rankings agree but the per-document ones do not: {hits}"]
    found = prefetch_tie_differences(stores, first_pass, chunks)
    for kind in stores:
        found += [
            f"{kind} does not group its own chunk ranking: {d}"
            for d in tie_differences(hits[kind], deep[kind][:top_k], top_k, deep[kind], deep[kind])
        ]
    return found


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("top_k", [5, 8])
def test_per_document_rankings_agree(
    stores: dict[str, VectorStore],
    vectors: dict[str, tuple[list[float], SparseVector]],
    embedder: Embedder,
    sparse: SparseEncoder,
    mode: Mode,
    top_k: int,
) -> None:
    """Retriever's grouping by document, compared by document (a document's equal-scored
    chunks may lead on either store)."""
    retrievers = {kind: Retriever(s, embedder, sparse, C) for kind, s in stores.items()}
    found = {}
    for query in QUERIES:
        dense = vectors[query][0]
        hits = {
            kind: [
                (h.doc_id, h.score)
                for h in r.search(query, mode, top_k, per_document=True, dense_vector=dense)
            ]
            for kind, r in retrievers.items()
        }
        assert len({d for d, _ in hits["edge"]}) == len(hits["edge"])
        # The whole per-document ranking Retriever's first pass (3 chunks a document) sees.
        first_pass = replace(make_search(vectors, query, mode, limit=3 * top_k), depth=3 * top_k)
        deep = {
            kind: _best_per_document(store.search(C, deepened(first_pass)))
            for kind, store in stores.items()
        }
        direct = tie_differences(hits["edge"], hits["local"], top_k, deep["edge"], deep["local"])
        if direct and mode == "hybrid":
            direct = _per_document_tie_differences(stores, first_pass, hits, deep, top_k)
        found[query] = direct
    assert {q: d for q, d in found.items() if d} == {}


@pytest.mark.parametrize("mode", MODES)
def test_score_threshold_cuts_alike(
    stores: dict[str, VectorStore],
    vectors: dict[str, tuple[list[float], SparseVector]],
    mode: Mode,
) -> None:
    """A threshold halfway between the second and third distinct scores: far from any score,
    so both stores must keep exactly the first two groups."""
    found = {}
    for query in QUERIES:
        plain = ranked(stores["edge"], make_search(vectors, query, mode))
        groups = score_groups(plain)
        if len(groups) < 3:
            continue
        threshold = (groups[1][0] + groups[2][0]) / 2
        search = make_search(vectors, query, mode, threshold=threshold)
        kept = ranked(stores["edge"], search)
        assert len(kept) == len(groups[0][1]) + len(groups[1][1]), query
        assert all(score >= threshold for _, score in kept)
        found[query] = search_differences(stores, search)
    assert len(found) >= 10
    assert {q: d for q, d in found.items() if d} == {}


# -- the HNSW index --------------------------------------------------------------------------


def _recall(approx: Ranking, exact: Ranking, deep_exact: Ranking) -> float:
    """Share of the exact top results found, a tie at the cut counting as found."""
    if not exact:
        return 1.0
    floor = exact[-1][1]
    acceptable = {k for k, s in deep_exact if s >= floor or close(s, floor)}
    return sum(k in acceptable for k, _ in approx) / len(exact)


def test_hnsw_index_finds_what_exact_search_finds(
    stores: dict[str, VectorStore], vectors: dict[str, tuple[list[float], SparseVector]]
) -> None:
    exact = stores["edge"]
    indexed = EdgeStore(":memory:", index_threshold=1, hnsw_ef=256)
    try:
        manifest = exact.manifest(C)
        assert manifest is not None
        indexed.create(C, int(manifest["embedder"]["dim"]), manifest)
        points, _ = exact.scroll(C, limit=EVERYTHING, vectors=True)
        copies = []
        for p in points:
            assert p.dense is not None
            assert p.sparse is not None
            copies.append(NewPoint(p.id, p.dense, p.sparse, p.payload))
        indexed.upsert(C, copies)
        before = indexed.index_status(C)
        assert indexed.optimize(C)
        after = indexed.index_status(C)
        # The dense vectors are in the HNSW graph now (sparse ones always are indexed).
        assert (before.dense_indexed, after.dense_indexed) == (0, len(points))
        recalls = []
        modes: tuple[Mode, ...] = ("dense", "hybrid")
        for mode in modes:
            for query in QUERIES:
                search = make_search(vectors, query, mode)
                found, wanted = ranked(indexed, search), ranked(exact, search)
                recalls.append(_recall(found, wanted, ranked(exact, deepened(search))))
        assert sum(recalls) / len(recalls) >= 0.99
    finally:
        indexed.close()


# -- changes, deletions, pruning, rebuilds ---------------------------------------------------


def _ingest_both(
    made: dict[str, VectorStore],
    root: Path,
    name: str,
    embedder: Embedder,
    sparse: SparseEncoder,
    opts: IngestOptions | None = None,
    size: int | None = None,
) -> None:
    reports = [
        Ingester(store, embedder, sparse, make_chunker(embedder, size=size), write_batch=8).run(
            [root], opts or IngestOptions(collection=name)
        )
        for store in made.values()
    ]
    first, second = reports
    assert (first.added, first.replaced, first.removed) == (
        second.added,
        second.replaced,
        second.removed,
    )
    assert (first.chunks_written, first.points_deleted) == (
        second.chunks_written,
        second.points_deleted,
    )


def _assert_congruent(made: dict[str, VectorStore], name: str) -> Snapshot:
    edge, local = made["edge"], made["local"]
    left = snapshot(edge, name)
    assert differences(left, snapshot(local, name)) == []
    assert edge.manifest(name) == local.manifest(name)
    assert edge.names() == local.names()
    return left


def test_changes_deletions_and_prune_leave_identical_stores(
    tmp_path: Path, shared: Embedder, sparse: SparseEncoder
) -> None:
    root = write_tree(tmp_path / "c")
    records = synthetic_records(8, words=60)
    write_jsonl(root / "records.jsonl", records)
    made = make_stores()
    try:
        _ingest_both(made, root, "changes", shared, sparse)
        before = _assert_congruent(made, "changes")
        long_doc = max(
            (f"d{i}" for i in range(8) if i != 5),
            key=lambda d: sum(p[0]["doc_id"] == d for p in before.values()),
        )
        assert sum(p[0]["doc_id"] == long_doc for p in before.values()) > 1
        # One record shrinks to one chunk (its other chunks are deleted), one changes, one goes,
        # a file goes and one is new.
        changed = next(f"d{i}" for i in range(8) if f"d{i}" not in (long_doc, "d5"))
        records = [r for r in records if r["_id"] != "d5"]
        for r in records:
            if r["_id"] == long_doc:
                r["text"] = "kabar only"
            elif r["_id"] == changed:
                r["text"] = f"{r['text']} lofel"
        write_jsonl(root / "records.jsonl", records)
        (root / "fruit.txt").unlink()
        (root / "new.md").write_text("# New\n\nA new document about sourdough.")
        _ingest_both(made, root, "changes", shared, sparse, IngestOptions("changes", prune=True))
        after = _assert_congruent(made, "changes")
        docs = {p[0]["doc_id"] for p in after.values()}
        assert "d5" not in docs
        assert "fruit.txt" not in docs
        assert "new.md" in docs
        assert [p[0]["text"] for p in after.values() if p[0]["doc_id"] == long_doc] == [
            "kabar only"
        ]
        assert point_id(long_doc, 1) in before
        assert point_id(long_doc, 1) not in after
    finally:
        for store in made.values():
            store.close()


def test_reindex_with_another_chunker_leaves_identical_stores(
    tmp_path: Path, shared: Embedder, sparse: SparseEncoder
) -> None:
    root = tmp_path / "c"
    root.mkdir()
    write_jsonl(root / "records.jsonl", synthetic_records(5, words=20))
    (root / "tides.md").write_text(MARKDOWN)
    made = make_stores()
    try:
        _ingest_both(made, root, "rebuilt", shared, sparse)
        before = _assert_congruent(made, "rebuilt")
        opts = IngestOptions("rebuilt", reindex=True)
        _ingest_both(made, root, "rebuilt", shared, sparse, opts, size=64)
        after = _assert_congruent(made, "rebuilt")
        assert len(after) > len(before)
        assert {str(p[0]["chunker"]) for p in after.values()} == {
            str({"size": 64, "overlap": 32, "version": 1})
        }
        assert made["edge"].names() == ["rebuilt"]
    finally:
        for store in made.values():
            store.close()
