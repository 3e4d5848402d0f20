"""The cases of `ragtune dataset build`: question and answer a line, every bad line named."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.cases import BuildCase, read_build_cases
from ragtune.errors import InvalidInput, NotFound


def test_cases_are_read_with_their_ids_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_text(
        '{"question": "Q1?", "answer": "A1", "id": "first"}\n'
        "\n"
        '{"question": "Q2?", "answer": "A2"}\n'
    )
    assert read_build_cases(path) == [
        BuildCase("first", 1, "Q1?", "A1"),
        BuildCase("3", 3, "Q2?", "A2"),
    ]


def test_every_malformed_line_is_named_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    lines = [
        '{"question": "fine?", "answer": "yes"}',
        "{not json",
        '{"question": "no answer?"}',
        '{"question": "", "answer": "empty question"}',
        '{"question": "q", "answer": "a", "vars": {}}',
        '["a list"]',
        '{"question": "dup?", "answer": "a", "id": "1"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput) as caught:
        read_build_cases(path)
    message = str(caught.value)
    assert "6 invalid line(s)" in message
    for expected in (
        "line 2: not valid JSON",
        'line 3: missing "answer"',
        'line 4: "question" must be a non-empty string',
        "line 5: unknown key 'vars'",
        "line 6: expected a JSON object, got list",
        "line 7: duplicate id '1' (first on line 1)",
    ):
        assert expected in message
    assert "line 1:" not in message


def test_a_missing_or_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        read_build_cases(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInput, match="holds no cases"):
        read_build_cases(tmp_path / "empty.jsonl")
