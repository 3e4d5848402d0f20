from __future__ import annotations

import pytest

from ingest.sparse import SparseEncoder
from ragtune.settings import SparseSettings


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


def test_indices_are_stable_across_encoders() -> None:
    a = SparseEncoder(SparseSettings()).encode_query("mitochondria")
    b = SparseEncoder(SparseSettings()).encode_query("mitochondria")
    assert a.indices == b.indices


def test_text_with_only_stopwords_gives_an_empty_vector(sparse: SparseEncoder) -> None:
    assert sparse.encode_document("the and of").indices == []


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="no Snowball stemmer"):
        SparseEncoder(SparseSettings(language="klingon"))
