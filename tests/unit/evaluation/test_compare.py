"""`ragtune eval compare`: what changed between two runs' summary.json files."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from evaluation.compare import Change, compare, comparison_table, print_comparison
from evaluation.report import write_outputs
from ragtune.errors import InvalidInput
from tests.fixtures.eval_results import results, summary


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def improved() -> dict[str, Any]:
    """Run B: few-shot passes more and costs less; rag is gone; adapter is new."""
    after = copy.deepcopy(summary())
    few = after["strategies"]["few-shot"]
    few["pass_rate"] = 0.75
    few["metrics"]["label"] = 0.75
    del few["metrics"]["word-count"]
    few["metrics"]["rouge-n"] = 0.4
    few["prompt_tokens"] = 200.0
    few["latency_ms"]["p95"] = 250.0
    after["strategies"]["adapter"] = after["strategies"].pop("rag")
    after["gates"] = [
        {"strategy": "few-shot", "metric": "pass_rate", "passed": True, "value": 0.75, "bound": 0.7}
    ]
    return after


def changes_by_key(
    a: dict[str, Any], b: dict[str, Any], tmp_path: Path
) -> dict[tuple[str, str], Change]:
    comparison = compare(write(tmp_path / "a.json", a), write(tmp_path / "b.json", b))
    return {(c.strategy, c.metric): c for c in comparison.changes}


def test_compare_reports_each_metric_with_its_direction(tmp_path: Path) -> None:
    found = changes_by_key(summary(), improved(), tmp_path)
    pass_rate = found[("few-shot", "pass_rate")]
    assert (pass_rate.before, pass_rate.after, pass_rate.delta) == (0.5, 0.75, 0.25)
    assert pass_rate.status == "better"
    assert found[("few-shot", "prompt_tokens")].status == "better"
    assert found[("few-shot", "latency_p95")].status == "worse"
    assert found[("few-shot", "latency_p50")].status == "same"
    assert found[("few-shot", "word-count")].status == "removed"
    assert found[("few-shot", "rouge-n")].status == "added"
    assert found[("zero-shot", "pass_rate")].status == "same"


def test_compare_lists_added_and_removed_strategies_and_flipped_gates(tmp_path: Path) -> None:
    comparison = compare(
        write(tmp_path / "a.json", summary()), write(tmp_path / "b.json", improved())
    )
    assert comparison.added_strategies == ["adapter"]
    assert comparison.removed_strategies == ["rag"]
    rag = [c for c in comparison.changes if c.strategy == "rag"]
    assert rag
    assert {c.status for c in rag} == {"removed"}
    assert [(g.strategy, g.metric, g.before, g.after) for g in comparison.gates] == [
        ("rag", "pass_rate", True, None),
        ("few-shot", "pass_rate", False, True),
    ]


def test_compare_keeps_two_gates_on_one_metric_apart(tmp_path: Path) -> None:
    """A gate with min and max gives two verdicts on the same strategy and metric."""
    gate = {"strategy": "rag", "metric": "latency_p95", "value": 240.0}
    low, high = {**gate, "bound": 100.0}, {**gate, "bound": 300.0}
    a = summary(gates=[{**low, "passed": False}, {**high, "passed": True}])
    b = summary(gates=[{**low, "passed": True}, {**high, "passed": True}])
    comparison = compare(write(tmp_path / "a.json", a), write(tmp_path / "b.json", b))
    assert [(g.strategy, g.metric, g.before, g.after) for g in comparison.gates] == [
        ("rag", "latency_p95", False, True)
    ]


def test_compare_reads_what_write_outputs_wrote(tmp_path: Path) -> None:
    """summary.json carries generated_at beside the --json keys; a run's folder works too."""
    write_outputs(tmp_path / "a", "Review sentiment", results(), summary())
    write_outputs(tmp_path / "b", "Review sentiment", results(), improved())
    comparison = compare(tmp_path / "a" / "summary.json", tmp_path / "b")
    assert comparison.suite_a == comparison.suite_b == "Review sentiment"
    assert ("few-shot", "pass_rate", "50.0%", "75.0%", "+25.0 pp", "better") in {
        tuple(row) for row in comparison_table(comparison).rows
    }


def test_print_comparison_plain(tmp_path: Path) -> None:
    comparison = compare(
        write(tmp_path / "a.json", summary()), write(tmp_path / "b.json", improved())
    )
    buffer = io.StringIO()
    print_comparison(comparison, Console(file=buffer, force_terminal=False, width=60))
    lines = buffer.getvalue().splitlines()
    assert lines[0] == f"A: {tmp_path / 'a.json'} (Review sentiment)"
    assert "strategies added in B: adapter" in lines
    assert "strategies removed in B: rag" in lines
    assert "13 unchanged metrics not shown" in lines
    assert not any(line.split()[:2] == ["zero-shot", "pass_rate"] for line in lines)
    rows = [line.split() for line in lines]
    assert ["few-shot", "pass_rate", "50.0%", "75.0%", "+25.0", "pp", "better"] in rows
    assert ["few-shot", "latency_p95", "190", "ms", "250", "ms", "+60", "ms", "worse"] in rows
    assert ["few-shot", "prompt_tokens", "310.0", "200.0", "-110.0", "better"] in rows
    assert ["few-shot", "rouge-n", "-", "40.0%", "added"] in rows
    assert "gate few-shot pass_rate: FAIL -> PASS" in lines
    assert all(line == line.rstrip() for line in lines)


def test_print_comparison_says_when_nothing_changed(tmp_path: Path) -> None:
    same = write(tmp_path / "a.json", summary())
    buffer = io.StringIO()
    print_comparison(compare(same, same), Console(file=buffer, force_terminal=False))
    assert buffer.getvalue().splitlines()[-1] == "no metric changed (27 compared)"


def test_print_comparison_colours_regressions_on_a_terminal(tmp_path: Path) -> None:
    comparison = compare(
        write(tmp_path / "a.json", improved()), write(tmp_path / "b.json", summary())
    )
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="standard", width=200)
    print_comparison(comparison, console)
    text = buffer.getvalue()
    assert "\x1b[1;31mworse" in text
    assert "\x1b[1;31mgate few-shot pass_rate: PASS -> FAIL" in text


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        ("{not json", "not JSON (line 1 column 2"),
        (b"\xff\xfe\x00", "not a text file"),
        ("[1, 2]", "not a summary.json: the top level: Input should be a valid dictionary"),
        ('{"suite": "s"}', "not a summary.json: strategies: Field required"),
        (
            json.dumps({"suite": "s", "strategies": {"rag": {"cases": 3}}}),
            "not a summary.json: strategies.rag.errors: Field required (and 5 more problems)",
        ),
    ],
)
def test_compare_names_the_bad_file_and_the_problem(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    good = write(tmp_path / "good.json", summary())
    bad = tmp_path / "results.jsonl"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidInput) as caught:
        compare(good, bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}: {problem}")
    assert message.endswith("pass the summary.json that `ragtune eval run --out DIR` wrote")
