from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingest.backends.base import VectorStore
from ingest.embedder import Embedder
from ingest.pipeline import Ingester, IngestOptions
from ingest.search import Retriever
from ingest.sparse import SparseEncoder
from ingest.store import Collection
from ragtune.errors import ConfigMismatch
from ragtune.settings import SparseSettings
from tests.conftest import SHARED_DATA, make_chunker
from tests.fixtures.corpus import synthetic_records, write_jsonl
from tests.fixtures.make_fastembed_bm25 import BLOCK, digests, scifact_texts
from tests.fixtures.make_fastembed_bm25 import OUT as FASTEMBED_VECTORS

# What fastembed's `Qdrant/bm25` wrote (tests/fixtures/make_fastembed_bm25.py made the file).
FASTEMBED: dict[str, Any] = json.loads(FASTEMBED_VECTORS.read_text(encoding="utf-8"))


def test_terms_are_lowercased_stemmed_and_free_of_stopwords(sparse: SparseEncoder) -> None:
    assert sparse.terms("The Running of the CELLS in studies") == ["run", "cell", "studi"]


def test_query_vector_has_unit_weight_per_distinct_term(sparse: SparseEncoder) -> None:
    vec = sparse.encode_query("cells cell running")
    assert len(vec.indices) == 2
    assert vec.values == [1.0, 1.0]


def test_document_weights_saturate_with_term_frequency(sparse: SparseEncoder) -> None:
    one = sparse.encode_document("protein")
    many = sparse.encode_document("protein " * 50)
    assert one.indices == many.indices
    assert many.values[0] > one.values[0]
    assert many.values[0] < 1.2 + 1  # BM25 caps tf weight at k1 + 1


def test_longer_documents_weigh_a_term_less(sparse: SparseEncoder) -> None:
    short = sparse.encode_document("protein folding")
    long = sparse.encode_document("protein " + "filler " * 400)
    idx = sparse.encode_query("protein").indices[0]
    weight = lambda v: v.values[v.indices.index(idx)]  # noqa: E731
    assert weight(long) < weight(short)


def test_vectors_are_the_same_from_every_encoder() -> None:
    text = "Mitochondria and the running of cells; mitochondrial DNA."
    a, b = SparseEncoder(SparseSettings()), SparseEncoder(SparseSettings())
    assert a.encode_query(text) == b.encode_query(text)
    assert a.encode_document(text) == b.encode_document(text)


def test_text_with_only_stopwords_gives_an_empty_vector(sparse: SparseEncoder) -> None:
    assert sparse.encode_document("the and of").indices == []


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="no Snowball stemmer"):
        SparseEncoder(SparseSettings(language="klingon"))


# Congruence with fastembed: vectors written here and by other Qdrant tools must meet.


@pytest.mark.parametrize("case", FASTEMBED["documents"], ids=lambda c: repr(c["text"][:30]))
def test_document_vectors_are_fastembeds(sparse: SparseEncoder, case: dict[str, Any]) -> None:
    ours = sparse.encode_document(case["text"])
    assert dict(zip(ours.indices, ours.values, strict=True)) == pytest.approx(
        dict(zip(case["indices"], case["values"], strict=True)), rel=1e-12
    )


@pytest.mark.parametrize("case", FASTEMBED["queries"], ids=lambda c: repr(c["text"][:30]))
def test_query_vectors_are_fastembeds(sparse: SparseEncoder, case: dict[str, Any]) -> None:
    ours = sparse.encode_query(case["text"])
    assert sorted(ours.indices) == sorted(case["indices"])
    assert set(ours.values) <= {1.0}


@pytest.mark.skipif(
    not (SHARED_DATA / "scifact" / "corpus.jsonl").is_file(),
    reason="../shared/data/scifact is not beside this checkout",
)
def test_every_scifact_vector_is_fastembeds(sparse: SparseEncoder) -> None:
    corpus, queries = scifact_texts(SHARED_DATA / "scifact")
    for name, texts, encode in (
        ("scifact_corpus", corpus, sparse.encode_document),
        ("scifact_queries", queries, sparse.encode_query),
    ):
        ours = digests([(v.indices, v.values) for v in map(encode, texts)])
        assert len(ours) == len(FASTEMBED[name])
        pairs = zip(ours, FASTEMBED[name], strict=True)
        differ = [i * BLOCK for i, (a, b) in enumerate(pairs) if a != b]
        assert not differ, f"{name}: texts from index {differ} (blocks of {BLOCK}) differ"


def test_fastembed_itself_agrees_where_installed(sparse: SparseEncoder, tmp_path: Path) -> None:
    """fastembed is no dependency (it pins huggingface-hub below 2); where it is importable,
    compare with it live, loaded offline from our stopword list."""
    bm25 = pytest.importorskip("fastembed.sparse.bm25")
    from ingest.sparse import ENGLISH_STOPWORDS

    (tmp_path / "english.txt").write_text("\n".join(sorted(ENGLISH_STOPWORDS)) + "\n")
    model = bm25.Bm25("Qdrant/bm25", specific_model_path=str(tmp_path))
    texts = [c["text"] for c in FASTEMBED["documents"]]
    for text, theirs in zip(texts, model.embed(texts), strict=True):
        ours = sparse.encode_document(text)
        assert dict(zip(ours.indices, ours.values, strict=True)) == pytest.approx(
            dict(zip(theirs.indices.tolist(), theirs.values.tolist(), strict=True))
        )


# A collection whose sparse vectors hold other token ids is refused, naming --reindex.


class _Version1Encoder(SparseEncoder):
    """Records what a collection built before the switch to fastembed's token ids recorded."""

    def info(self) -> dict[str, Any]:
        return {
            "kind": "bm25",
            "version": 1,
            "k1": 1.2,
            "b": 0.75,
            "avg_len": 256.0,
            "language": "english",
        }


def test_a_collection_with_older_token_ids_is_refused_naming_reindex(
    qdrant: VectorStore, embedder: Embedder, sparse: SparseEncoder, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", synthetic_records(3))
    chunker = make_chunker(embedder)
    Ingester(qdrant, embedder, _Version1Encoder(SparseSettings()), chunker).run(
        [path], IngestOptions(collection="old")
    )
    current = Ingester(qdrant, embedder, sparse, chunker)
    with pytest.raises(ConfigMismatch, match=r"sparse: .*'version': 1.*'version': 2.*--reindex"):
        current.run([path], IngestOptions(collection="old"))
    with pytest.raises(ConfigMismatch, match="sparse settings"):
        Retriever(qdrant, embedder, sparse, "old").search("kabar", mode="sparse")

    report = current.run([path], IngestOptions(collection="old", reindex=True))
    assert report.reindexed
    assert Collection(qdrant, "old").manifest()["sparse"] == sparse.info()  # type: ignore[index]
    assert Retriever(qdrant, embedder, sparse, "old").search("kabar", mode="sparse")
