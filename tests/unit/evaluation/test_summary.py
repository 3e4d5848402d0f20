"""Per-strategy summaries and gates: the `--json` object of `ragtune eval run`."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from evaluation.results import AssertionResult, CaseOutput, CaseResult
from evaluation.summary import gates_hold, summarize
from ragtune.errors import InvalidInput


@dataclass
class Gate:
    strategy: str
    metric: str
    min: float | None = None
    max: float | None = None
    max_ratio_of: str | None = None
    min_ratio_of: str | None = None
    value: float | None = None


def _result(
    strategy: str,
    case: str,
    scores: list[tuple[str, float, float]],
    *,
    latency: float = 100.0,
    prompt: int = 10,
    error: str | None = None,
) -> CaseResult:
    verdicts = [
        AssertionResult(type=m, metric=m, passed=s == 1.0, score=s, weight=w, reason="because")
        for m, s, w in scores
    ]
    output = (
        None
        if error
        else CaseOutput(answer="a", latency_ms=latency, prompt_tokens=prompt, completion_tokens=2)
    )
    passed = error is None and all(v.passed for v in verdicts)
    return CaseResult(
        case_id=case,
        strategy=strategy,
        vars={},
        output=output,
        error=error,
        assertions=verdicts,
        passed=passed,
        score=1.0 if passed else 0.0,
    )


RESULTS = [
    _result("plain", "1", [("equals", 1.0, 1.0), ("rouge-n", 0.5, 3.0)], latency=100, prompt=100),
    _result("plain", "2", [("equals", 0.0, 1.0), ("rouge-n", 1.0, 1.0)], latency=300, prompt=300),
    _result("tuned", "1", [("equals", 1.0, 1.0)], latency=50, prompt=40),
    _result("tuned", "2", [("equals", 0.0, 1.0)], error="HTTP 503"),
]


def test_figures_per_strategy_have_the_documented_shape() -> None:
    summary = summarize("reviews", ["plain", "tuned"], RESULTS, [])
    assert summary["suite"] == "reviews"
    assert list(summary["strategies"]) == ["plain", "tuned"]
    plain = summary["strategies"]["plain"]
    assert set(plain) == {
        "cases", "errors", "pass_rate", "metrics", "latency_ms", "prompt_tokens",
        "completion_tokens",
    }  # fmt: skip
    assert plain["cases"] == 2
    assert plain["errors"] == 0
    assert plain["pass_rate"] == 0.0
    # Weighted: (0.5 * 3 + 1.0 * 1) / 4.
    assert plain["metrics"] == {"equals": 0.5, "rouge-n": pytest.approx(0.625)}
    assert plain["latency_ms"] == {"p50": 200.0, "p95": pytest.approx(290.0)}
    assert plain["prompt_tokens"] == 200.0
    tuned = summary["strategies"]["tuned"]
    # The failed call counts as a case and an error; its tokens and latency are not averaged.
    assert (tuned["cases"], tuned["errors"], tuned["pass_rate"]) == (2, 1, 0.5)
    assert tuned["prompt_tokens"] == 40.0
    assert tuned["latency_ms"] == {"p50": 50.0, "p95": 50.0}
    assert summary["gates"] == []


def test_a_strategy_without_results_reports_zeros() -> None:
    summary = summarize("s", ["none"], [], [])
    assert summary["strategies"]["none"]["cases"] == 0
    assert summary["strategies"]["none"]["latency_ms"] == {"p50": 0.0, "p95": 0.0}


@pytest.mark.parametrize(
    ("gate", "passed", "value", "bound"),
    [
        (Gate("tuned", "pass_rate", min=0.5), True, 0.5, 0.5),
        (Gate("tuned", "pass_rate", min=0.6), False, 0.5, 0.6),
        (Gate("plain", "rouge-n", min=0.7), False, 0.625, 0.7),
        (Gate("plain", "errors", max=0), True, 0.0, 0.0),
        (Gate("tuned", "errors", max=0), False, 1.0, 0.0),
        (Gate("plain", "latency_p50", max=250), True, 200.0, 250.0),
        # 40 prompt tokens <= 0.5 x 200.
        (Gate("tuned", "prompt_tokens", max_ratio_of="plain", value=0.5), True, 40.0, 100.0),
        (Gate("tuned", "prompt_tokens", max_ratio_of="plain", value=0.1), False, 40.0, 20.0),
        (Gate("tuned", "equals", min_ratio_of="plain", value=1.0), True, 0.5, 0.5),
        (Gate("tuned", "equals", min_ratio_of="plain", value=1.2), False, 0.5, 0.6),
        # A metric the strategy does not report fails its gate.
        (Gate("tuned", "rouge-n", min=0.1), False, 0.0, 0.1),
    ],
)
def test_gates(gate: Gate, passed: bool, value: float, bound: float) -> None:
    summary = summarize("s", ["plain", "tuned"], RESULTS, [gate])
    assert summary["gates"] == [
        {
            "strategy": gate.strategy,
            "metric": gate.metric,
            "passed": passed,
            "value": pytest.approx(value),
            "bound": pytest.approx(bound),
        }
    ]
    assert gates_hold(summary) is passed


def test_a_gate_with_min_and_max_gives_a_verdict_for_each() -> None:
    summary = summarize("s", ["plain"], RESULTS, [Gate("plain", "equals", min=0.4, max=0.45)])
    assert [g["passed"] for g in summary["gates"]] == [True, False]


def test_gates_on_strategies_that_did_not_run_are_left_out() -> None:
    gates = [
        Gate("other", "pass_rate", min=1),
        Gate("tuned", "pass_rate", min_ratio_of="x", value=1),
    ]
    assert summarize("s", ["plain", "tuned"], RESULTS, gates)["gates"] == []


def test_a_ratio_gate_without_value_is_refused() -> None:
    with pytest.raises(InvalidInput, match="needs `value`"):
        summarize("s", ["plain", "tuned"], RESULTS, [Gate("tuned", "score", max_ratio_of="plain")])
