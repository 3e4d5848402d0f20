from __future__ import annotations

from typing import Any

import pytest

from ingest.search import Hit
from service.llm.tokens import TokenCounter
from service.rag.context import Source, pack_sources, render_context


def hit(n: int, words: int, **payload: Any) -> Hit:
    text = " ".join(f"w{n}x{i}" for i in range(words))
    return Hit(id=str(n), score=1.0 / n, payload={"text": text, "title": f"doc {n}", **payload})


@pytest.fixture
def counter() -> TokenCounter:
    return TokenCounter(None)  # the character estimate: deterministic and model-free


def test_sources_are_numbered_in_rank_order_within_the_budget(counter: TokenCounter) -> None:
    hits = [hit(n, 20) for n in range(1, 6)]
    sources = pack_sources(hits, counter, budget=200)
    assert [s.number for s in sources] == list(range(1, len(sources) + 1))
    assert [s.hit.id for s in sources] == [h.id for h in hits[: len(sources)]]
    assert 1 <= len(sources) < 5
    assert counter.count(render_context(sources)) <= 200


def test_a_source_too_long_for_the_rest_of_the_budget_is_cut(counter: TokenCounter) -> None:
    sources = pack_sources([hit(1, 5), hit(2, 500)], counter, budget=300)
    assert len(sources) == 2
    assert len(sources[1].text) < len(sources[1].hit.text)
    assert counter.count(render_context(sources)) <= 300


def test_nothing_fits_means_no_sources(counter: TokenCounter) -> None:
    assert pack_sources([hit(1, 500)], counter, budget=10) == []
    assert render_context([]) == "(no sources were found)"


def test_header_names_title_and_section() -> None:
    source = Source(1, hit(1, 3, headers=["Guide", "Bread"], title="Guide"), "text")
    assert source.header() == "[1] Guide — Bread"
    assert Source(2, hit(2, 3), "t").header() == "[2] doc 2"


def test_split_keeps_every_character_and_respects_the_limit(counter: TokenCounter) -> None:
    text = "\n\n".join("para " * n for n in (5, 300, 2, 40))
    pieces = counter.split(text, 100)
    assert "".join(pieces) == text
    assert all(counter.count(p.strip()) <= 100 for p in pieces)


def test_count_many_matches_count_and_stays_bounded() -> None:
    class Tokenizer:
        """Whitespace tokens; counts how many texts it was asked to encode."""

        encoded = 0

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            self.encoded += 1
            return [0] * len(text.split())

        def __call__(self, texts: list[str], add_special_tokens: bool = False) -> Any:
            self.encoded += len(texts)
            return {"input_ids": [[0] * len(t.split()) for t in texts]}

    tokenizer = Tokenizer()
    counter = TokenCounter(tokenizer, cache_size=3)
    texts = ["a b", "c d e", "a b", "f"]
    assert counter.count_many(texts) == [counter.count(t) for t in texts] == [2, 3, 2, 1]
    before = tokenizer.encoded
    assert counter.count_many(["c d e", "f"]) == [3, 1]
    assert tokenizer.encoded == before  # both remembered
    counter.count_many(["g h", "i"])  # two new ones push out the two least recent
    assert len(counter._cache) == 3
    before = tokenizer.encoded
    counter.count_many(["a b"])
    assert tokenizer.encoded == before + 1
