from __future__ import annotations

import pytest

from ingest.chunking import Chunker
from ingest.documents import Document
from ingest.embedder import Embedder
from ragtune.errors import InvalidInput
from ragtune.settings import ChunkingSettings
from tests.conftest import make_chunker
from tests.fixtures.corpus import MARKDOWN


def _doc(text: str, file_type: str = "txt", title: str = "") -> Document:
    return Document(doc_id="d", text=text, title=title, source="/x", file_type=file_type)


def _read_tokens(embedder: Embedder, text: str) -> int:
    """Tokens the embedder really reads for `text`, special tokens included."""
    return len(embedder.tokenizer(text)["input_ids"])


def test_default_size_is_what_the_embedder_reads(embedder: Embedder) -> None:
    chunker = make_chunker(embedder)
    assert embedder.max_tokens == 256
    assert chunker.size == 254
    assert chunker.info() == {"size": 254, "overlap": 32, "version": 1}


@pytest.mark.parametrize(
    "text",
    [
        " ".join(f"word{i}" for i in range(3000)),
        "x" * 20000,  # no separators at all
        "Antidisestablishmentarianism-" * 800,
        "\n\n".join(f"Sentence number {i} is here. " * 9 for i in range(200)),
        "深度学习模型" * 900,
    ],
)
def test_no_chunk_exceeds_the_embedder_limit(embedder: Embedder, text: str) -> None:
    chunker = make_chunker(embedder)
    chunks = chunker.split(_doc(text, title="A title that takes some tokens of the budget"))
    assert len(chunks) > 1
    for chunk in chunks:
        assert _read_tokens(embedder, chunk.embed_text) <= embedder.max_tokens
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_smaller_size_and_overlap_are_respected(embedder: Embedder) -> None:
    chunker = make_chunker(embedder, size=64, overlap=16)
    text = " ".join(f"token{i}" for i in range(600))
    chunks = chunker.split(_doc(text))
    assert all(chunker.count(c.text) <= 64 for c in chunks)
    # Neighbours share words: the overlap.
    first, second = chunks[0].text.split(), chunks[1].text.split()
    assert set(first[-3:]) <= set(second)


def test_markdown_splits_on_headers_and_keeps_the_header_path(embedder: Embedder) -> None:
    chunks = make_chunker(embedder).split(_doc(MARKDOWN, file_type="md", title="Kitchen guide"))
    by_text = {c.text.split()[0]: c for c in chunks}
    sourdough = by_text["A"]
    assert sourdough.headers == ("Kitchen guide", "Bread", "Sourdough")
    assert sourdough.embed_text.startswith("Kitchen guide > Bread > Sourdough\n")
    assert by_text["Simmer"].headers == ("Kitchen guide", "Soup")
    assert "#" not in "".join(c.text for c in chunks)


def test_plain_text_chunks_carry_the_title_as_context(embedder: Embedder) -> None:
    (chunk,) = make_chunker(embedder).split(_doc("Short body.", title="Doc title"))
    assert chunk.text == "Short body."
    assert chunk.embed_text == "Doc title\nShort body."


def test_a_huge_title_is_capped(embedder: Embedder) -> None:
    chunker = make_chunker(embedder)
    chunks = chunker.split(_doc("body " * 50, title="long title " * 400))
    context = chunks[0].embed_text.split("\n")[0]
    assert chunker.count(context) <= chunker.size // 4
    assert _read_tokens(embedder, chunks[0].embed_text) <= embedder.max_tokens


def test_splitting_is_deterministic(embedder: Embedder) -> None:
    text = " ".join(f"w{i % 97}" for i in range(2000))
    assert make_chunker(embedder).split(_doc(text)) == make_chunker(embedder).split(_doc(text))


def test_size_above_the_embedder_limit_is_refused(embedder: Embedder) -> None:
    with pytest.raises(InvalidInput, match=r"larger than the 254 tokens .* at most 254"):
        Chunker(embedder.tokenizer, 254, ChunkingSettings(size=512))


def test_overlap_not_below_size_is_refused(embedder: Embedder) -> None:
    with pytest.raises(InvalidInput, match="overlap 64 must be smaller"):
        Chunker(embedder.tokenizer, 254, ChunkingSettings(size=64, overlap=64))
