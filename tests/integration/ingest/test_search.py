"""Retrieval over a real collection: every mode finds the right document; filters work."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.backends.base import VectorStore
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
