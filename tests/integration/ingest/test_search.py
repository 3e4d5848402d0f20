"""Retrieval over a real collection: every mode finds the right document; filters work."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ingest.backends.base import NewPoint, VectorStore
from ingest.embedder import Embedder
from ingest.pipeline import Ingester, IngestOptions
from ingest.search import Retriever, build_filter, parse_filters
from ingest.sparse import SparseEncoder
from ragtune.errors import ConfigMismatch, InvalidInput, NotFound
from ragtune.settings import SparseSettings
from tests.fixtures.corpus import write_tree


@pytest.fixture
def retriever(ingester: Ingester, tmp_path: Path) -> Retriever:
    ingester.run([write_tree(tmp_path / "c")], IngestOptions(collection="docs"))
    return Retriever(ingester.store, ingester.embedder, ingester.sparse, "docs")


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_mode_ranks_the_matching_document_first(retriever: Retriever, mode: str) -> None:
    hits = retriever.search("when do orchard keepers prune apple trees", mode=mode, top_k=3)  # type: ignore[arg-type]
    assert hits[0].payload["file_name"] == "fruit.txt"
    assert hits[0].score > 0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_dense_finds_meaning_without_shared_words(retriever: Retriever) -> None:
    hits = retriever.search("old spacecraft that keep sending data home", mode="dense", top_k=1)
    assert hits[0].payload["file_name"] == "voyager.txt"


def test_filters_restrict_the_results(retriever: Retriever) -> None:
    hits = retriever.search("apple trees", mode="hybrid", top_k=5, filters={"file_type": "md"})
    assert hits
    assert {h.payload["file_type"] for h in hits} == {"md"}
    any_of = retriever.search(
        "apple", mode="dense", top_k=10, filters={"file_type": ["pdf", "html"]}
    )
    assert {h.payload["file_type"] for h in any_of} == {"pdf", "html"}


def test_per_document_returns_one_chunk_per_document(retriever: Retriever) -> None:
    hits = retriever.search("bread soup kitchen", mode="dense", top_k=10, per_document=True)
    ids = [h.doc_id for h in hits]
    assert len(ids) == len(set(ids)) == 5


def test_bad_queries_are_refused(retriever: Retriever) -> None:
    with pytest.raises(InvalidInput, match="query is empty"):
        retriever.search("  ")
    with pytest.raises(InvalidInput, match="top_k must be at least 1"):
        retriever.search("x", top_k=0)
    with pytest.raises(InvalidInput, match="mode 'fuzzy'"):
        retriever.search("x", mode="fuzzy")  # type: ignore[arg-type]


def test_missing_collection_names_how_to_create_it(
    qdrant: VectorStore, embedder: Embedder, sparse: SparseEncoder
) -> None:
    with pytest.raises(
        NotFound, match=r"'nope' does not exist.*ragtune ingest PATH --collection nope"
    ):
        Retriever(qdrant, embedder, sparse, "nope")


def test_other_sparse_settings_refuse_lexical_modes(retriever: Retriever) -> None:
    other = Retriever(
        retriever.store, retriever.embedder, SparseEncoder(SparseSettings(k1=2.0)), "docs"
    )
    assert other.search("apple", mode="dense")
    with pytest.raises(ConfigMismatch, match="sparse settings"):
        other.search("apple", mode="sparse")


def test_parse_filters_types_values_and_merges_repeats() -> None:
    assert parse_filters(["a=1", "b=true", "c=x", "c=y"]) == {"a": 1, "b": True, "c": ["x", "y"]}
    with pytest.raises(InvalidInput, match="not of the form key=value"):
        parse_filters(["novalue"])
    with pytest.raises(InvalidInput, match="of one type"):
        build_filter({"a": [1, "x"]})


def test_equal_scores_come_back_in_id_order_whatever_the_store_returns(
    ingester: Ingester,
) -> None:
    """Ties settle by id, also at the cut: the same question always builds the same prompt."""
    store, embedder, sparse = ingester.store, ingester.embedder, ingester.sparse
    store.create("ties", embedder.dim, ingester.manifest())
    query = "tidal harbours"
    near, far = (v.tolist() for v in embedder.encode([query, "harbour walls at low tide"]))
    ids = sorted(str(uuid.uuid4()) for _ in range(6))
    # Exact ties: the same vectors, stored highest id first (a store that breaks ties by
    # storage order would return that one first).
    same = [NewPoint(i, near, sparse.encode_document(query), {"doc_id": i}) for i in ids]
    store.upsert("ties", same[::-1])
    retriever = Retriever(store, embedder, sparse, "ties")
    for mode in ("dense", "sparse"):
        hits = retriever.search(query, mode=mode, top_k=3)  # type: ignore[arg-type]
        assert [h.id for h in hits] == ids[:3], mode
        assert len({h.score for h in hits}) == 1
        grouped = retriever.search(query, mode=mode, top_k=2, per_document=True)  # type: ignore[arg-type]
        assert [h.doc_id for h in grouped] == ids[:2], mode

    # Fused ties: two chunks that trade ranks between the dense and the sparse side get the
    # same reciprocal-rank score (1/2 + 1/3).
    store.create("fused", embedder.dim, ingester.manifest())
    low, high = ids[0], ids[-1]
    store.upsert(
        "fused",
        [
            NewPoint(high, near, sparse.encode_document("tidal"), {"doc_id": high}),
            NewPoint(low, far, sparse.encode_document(query), {"doc_id": low}),
        ],
    )
    fused = Retriever(store, embedder, sparse, "fused").search(query, mode="hybrid", top_k=2)
    assert fused[0].score == fused[1].score
    assert [h.id for h in fused] == [low, high]
