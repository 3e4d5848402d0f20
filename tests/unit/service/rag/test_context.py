from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from engine.tokens import TokenCounter
from ingest.search import Hit
from ragtune.settings import Settings
from service.rag.context import Source, pack_sources, render_context
from tests.conftest import TinyModel


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


class WordTokenizer:
    """Whitespace tokens, in the shape of a `tokenizers.Tokenizer`; counts the texts it was
    asked to encode."""

    encoded = 0

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[Any]:
        self.encoded += len(texts)
        return [
            SimpleNamespace(offsets=[m.span() for m in re.finditer(r"\S+", text)]) for text in texts
        ]


def test_count_many_matches_count_and_stays_bounded() -> None:
    tokenizer = WordTokenizer()
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


def test_a_cut_source_ends_at_a_token_boundary_without_tokenizing_again() -> None:
    tokenizer = WordTokenizer()
    counter = TokenCounter(tokenizer)
    first = Hit(id="1", score=1.0, payload={"text": "one two three", "title": "A"})
    second = Hit(id="2", score=0.5, payload={"text": " ".join(f"w{i}" for i in range(50))})
    # [1] A / one two three = 5 tokens + 2; [2] = 1 header token, room for 40 of its words.
    sources = pack_sources([first, second], counter, budget=5 + 2 + 2 + 41)
    assert tokenizer.encoded == 2  # the two rendered sources, once
    assert [s.text for s in sources] == ["one two three", " ".join(f"w{i}" for i in range(40))]
    # This tokenizer has no tokens for the newlines that the budget reserves 2 each for.
    assert counter.count(render_context(sources)) == 5 + 1 + 40


def test_real_tokenizer_cuts_and_splits_within_budget_and_loses_nothing(
    tiny_model: TinyModel,
) -> None:
    counter = TokenCounter.for_settings(Settings(llm={"model": str(tiny_model.path)}))
    assert counter.exact
    words = "Crème brûlée, 日本語のテキスト and emoji 🍞🥖 mixed with plain words; " * 40
    hits = [
        Hit(id=str(n), score=1.0 / n, payload={"text": f"{n}: {words}", "title": f"doc {n}"})
        for n in range(1, 4)
    ]
    whole = counter.count(hits[0].text)
    # Room for the first hit whole and part of the second, never for the third.
    for budget in (whole + 60, whole + 200, 2 * whole):
        sources = pack_sources(hits, counter, budget)
        assert [s.number for s in sources] == [1, 2]
        assert sources[0].text == hits[0].text
        cut = sources[1].text
        assert hits[1].text.startswith(cut)
        assert len(cut) < len(hits[1].text)
        # The cut fills the room left, to within the tokens that merge at its boundary.
        assert budget - 8 <= counter.count(render_context(sources)) <= budget
    text = "\n\n".join([words, words * 3, "short", words])
    pieces = counter.split(text, 100)
    assert "".join(pieces) == text
    assert all(counter.count(p) <= 100 for p in pieces)
