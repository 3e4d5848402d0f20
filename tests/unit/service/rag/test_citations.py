from __future__ import annotations

import pytest

from service.rag.citations import CitationCheck, StreamingCitations


@pytest.mark.parametrize(
    ("text", "cleaned", "cited", "removed"),
    [
        ("See [1] and [2].", "See [1] and [2].", {1, 2}, 0),
        ("Made up [3].", "Made up .", set(), 1),
        ("Mixed [1, 3, 2].", "Mixed [1, 2].", {1, 2}, 1),
        ("Zero [0] is no source.", "Zero  is no source.", set(), 1),
        ("Lists [a] and [x1] stay.", "Lists [a] and [x1] stay.", set(), 0),
        ("Code x[1] counts too.", "Code x[1] counts too.", {1}, 0),
        ("[2][9]", "[2]", {2}, 1),
    ],
)
def test_markers_pointing_nowhere_are_removed_and_counted(
    text: str, cleaned: str, cited: set[int], removed: int
) -> None:
    check = CitationCheck(sources=2)
    assert check.clean(text) == cleaned
    assert check.cited == cited
    assert check.removed == removed


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_streaming_gives_the_same_text_whatever_the_piece_size(size: int) -> None:
    text = "A [1] b [7] c [1, 9] d [2 e [3"
    whole = CitationCheck(sources=2)
    expected = whole.clean(text)
    check = CitationCheck(sources=2)
    stream = StreamingCitations(check)
    out = "".join(stream.feed(text[i : i + size]) for i in range(0, len(text), size))
    out += stream.flush()
    assert out == expected
    assert (check.cited, check.removed) == (whole.cited, whole.removed)


def test_streaming_holds_back_only_a_possible_marker() -> None:
    stream = StreamingCitations(CitationCheck(sources=1))
    assert stream.feed("Hello [") == "Hello "
    assert stream.feed("1") == ""
    assert stream.feed("] world") == "[1] world"
    # A bracket that cannot become a marker is let through at once.
    assert stream.feed(" [x") == " [x"
