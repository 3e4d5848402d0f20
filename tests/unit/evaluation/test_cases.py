"""cases.jsonl and few-shot sources: what is read, what is refused (with FILE:LINE), drawing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from evaluation.cases import Case, Example, SuiteError, draw_examples, read_cases, read_examples
from ragtune.errors import InvalidInput


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cases_are_read_with_ids_lines_and_asserts(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cases.jsonl",
        '{"vars": {"text": "a"}}',
        "",
        '{"vars": {"text": "b"}, "id": "second", "assert": [{"type": "contains", "value": "b"}]}',
        '{"id": 7}',
    )
    cases = read_cases(path)
    assert [(c.id, c.line) for c in cases] == [("1", 1), ("second", 3), ("7", 4)]
    assert cases[1].vars == {"text": "b"}
    assert [a.type for a in cases[1].asserts] == ["contains"]
    assert cases[2].vars == {}
    assert isinstance(cases[0], Case)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        ('{"vars": {}, "expected": "x"}', "unknown key 'expected'"),
        ('{"vars": ["a"]}', "'vars' must be a JSON object"),
        ('{"vars": {}, "assert": {"type": "equals"}}', "'assert' must be a list"),
        ('{"vars": {}, "assert": [{"type": "equal", "value": "x"}]}', "unknown assertion type"),
        ('{"vars": {}, "assert": [{"type": "equals", "valeu": "x"}]}', "field 'valeu'"),
        ('{"vars": {}, "assert": [{"type": "equals"}]}', "needs a 'value'"),
        ('{"vars": {}, "id": "1"}', "duplicate case id '1' (first on line 1)"),
        ('{"vars": {}, "id": true}', "'id' must be a string"),
    ],
)
def test_bad_cases_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "cases.jsonl", '{"vars": {"a": 1}}', "", line)
    with pytest.raises(SuiteError) as info:
        read_cases(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)
    assert isinstance(info.value, InvalidInput)


def test_an_empty_cases_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="no cases"):
        read_cases(write(tmp_path / "cases.jsonl", "", "  "))


def test_examples_need_both_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.jsonl",
        '{"text": "good", "label": {"s": "pos"}}',
        '{"text": "bad"}',
    )
    with pytest.raises(SuiteError) as info:
        read_examples(path, "text", "label")
    assert str(info.value).startswith(f"{path}:2: the row has no field 'label'")
    rows = read_examples(write(path, '{"text": "good", "label": {"s": "pos"}}'), "text", "label")
    assert (rows[0].input, rows[0].output) == ("good", '{"s": "pos"}')


def rows(labels: dict[str, int]) -> list[Example]:
    out: list[Example] = []
    for label, count in labels.items():
        for i in range(count):
            out.append(Example(line=len(out) + 1, vars={}, input=f"{label}-{i}", output=label))
    return out


def test_draw_is_seeded_and_deterministic() -> None:
    pool = rows({"pos": 10, "neg": 10, "neu": 10})
    first = draw_examples(pool, 6, seed=1)
    assert [r.input for r in first] == [r.input for r in draw_examples(pool, 6, seed=1)]
    others = [[r.input for r in draw_examples(pool, 6, seed=s)] for s in range(2, 6)]
    assert any(o != [r.input for r in first] for o in others)


def test_draw_is_balanced_over_outputs() -> None:
    pool = rows({"pos": 20, "neg": 3, "neu": 5})
    for seed in range(5):
        drawn = draw_examples(pool, 6, seed)
        assert Counter(r.output for r in drawn) == {"pos": 2, "neg": 2, "neu": 2}
        # round-robin: the labels alternate instead of coming in blocks
        assert len({r.output for r in drawn[:3]}) == 3
    small = draw_examples(pool, 8, 0)
    counts = Counter(r.output for r in small)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_draw_never_takes_a_scored_case() -> None:
    pool = rows({"pos": 3, "neg": 3})
    exclude: set[str] = {"pos-0", "pos-1", "neg-2"}
    for seed in range(10):
        drawn = draw_examples(pool, 3, seed, exclude)
        assert not {r.input for r in drawn} & exclude
    assert len(draw_examples(pool, 10, 0, exclude)) == 3  # all that is left


def test_draw_excludes_by_rendered_prompt_too() -> None:
    row = Example(line=1, vars={}, input="x", output="y", prompt="Review: x")
    assert draw_examples([row], 1, 0, {"Review: x"}) == []
    assert draw_examples([row], 1, 0, {"x"}) == []
    assert draw_examples([row], 1, 0, {"z"}) == [row]


def test_json_output_labels_are_grouped_by_their_text(tmp_path: Path) -> None:
    lines: list[Any] = [{"t": f"r{i}", "l": {"s": "pos" if i % 2 else "neg"}} for i in range(6)]
    path = write(tmp_path / "t.jsonl", *(json.dumps(x) for x in lines))
    drawn = draw_examples(read_examples(path, "t", "l"), 2, seed=3)
    assert {r.output for r in drawn} == {'{"s": "pos"}', '{"s": "neg"}'}
