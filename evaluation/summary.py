"""Per-strategy figures and the suite's gates: the `--json` object of `ragtune eval run`.

{"suite": str, "strategies": {NAME: {"cases", "errors", "pass_rate", "metrics": {METRIC: float},
"latency_ms": {"p50", "p95"}, "prompt_tokens", "completion_tokens"}},
"gates": [{"strategy", "metric", "passed", "value", "bound"}]}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from evaluation.results import CaseResult
from ragtune.errors import InvalidInput

# Gate metrics that are not assertion metrics: where each is found in a strategy's figures.
BUILTIN_METRICS = (
    "pass_rate",
    "score",
    "errors",
    "cases",
    "prompt_tokens",
    "completion_tokens",
    "latency_p50",
    "latency_p95",
)


class GateSpec(Protocol):
    """A suite's gate (evaluation.suite's model has these fields)."""

    strategy: str
    metric: str
    min: float | None
    max: float | None
    max_ratio_of: str | None
    min_ratio_of: str | None
    value: float | None


def strategy_summary(results: Sequence[CaseResult]) -> dict[str, Any]:
    """One strategy's figures over its results."""
    cases = len(results)
    outputs = [r.output for r in results if r.output is not None and r.error is None]
    weights: dict[str, float] = {}
    scores: dict[str, float] = {}
    for result in results:
        for item in result.assertions:
            weights[item.metric] = weights.get(item.metric, 0.0) + item.weight
            scores[item.metric] = scores.get(item.metric, 0.0) + item.weight * item.score
    metrics = {name: scores[name] / w if w else 0.0 for name, w in weights.items()}
    latencies = [o.latency_ms for o in outputs]
    return {
        "cases": cases,
        "errors": sum(1 for r in results if r.error is not None),
        "pass_rate": sum(1 for r in results if r.passed) / cases if cases else 0.0,
        "metrics": metrics,
        "latency_ms": {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95)},
        "prompt_tokens": _mean(o.prompt_tokens for o in outputs),
        "completion_tokens": _mean(o.completion_tokens for o in outputs),
    }


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def _mean(values: Iterable[int]) -> float:
    found = list(values)
    return sum(found) / len(found) if found else 0.0


def metric_value(figures: dict[str, Any], metric: str) -> float | None:
    """A strategy's value of `metric` (a builtin name or an assertion metric); None if it has
    no such metric."""
    if metric in ("latency_p50", "latency_p95"):
        return float(figures["latency_ms"][metric.removeprefix("latency_")])
    if metric == "score":
        return figures.get("score")
    if metric in BUILTIN_METRICS:
        return float(figures[metric])
    value = figures["metrics"].get(metric)
    return None if value is None else float(value)


def evaluate_gates(
    strategies: dict[str, dict[str, Any]],
    scores: dict[str, float],
    gates: Sequence[GateSpec],
) -> list[dict[str, Any]]:
    """Each gate's verdict. Gates on strategies that did not run (--filter-strategy) are left
    out; a metric a strategy does not report fails its gate with value 0."""
    verdicts: list[dict[str, Any]] = []
    for gate in gates:
        other = gate.max_ratio_of or gate.min_ratio_of
        if gate.strategy not in strategies or (other and other not in strategies):
            continue
        figures = strategies[gate.strategy] | {"score": scores.get(gate.strategy, 0.0)}
        value = metric_value(figures, gate.metric)
        checks: list[tuple[float, bool]] = []  # (bound, upper bound?)
        if gate.min is not None:
            checks.append((gate.min, False))
        if gate.max is not None:
            checks.append((gate.max, True))
        if other is not None:
            if gate.value is None:
                raise InvalidInput(
                    f"gate on {gate.strategy!r} {gate.metric}: a ratio gate needs `value` "
                    f"(e.g. max_ratio_of: {other}, value: 0.5)"
                )
            theirs = strategies[other] | {"score": scores.get(other, 0.0)}
            base = metric_value(theirs, gate.metric) or 0.0
            checks.append((gate.value * base, gate.max_ratio_of is not None))
        for bound, upper in checks:
            passed = value is not None and (value <= bound if upper else value >= bound)
            verdicts.append(
                {
                    "strategy": gate.strategy,
                    "metric": gate.metric,
                    "passed": passed,
                    "value": 0.0 if value is None else value,
                    "bound": bound,
                }
            )
    return verdicts


def summarize(
    suite_name: str,
    strategy_names: Sequence[str],
    results: Sequence[CaseResult],
    gates: Sequence[GateSpec],
) -> dict[str, Any]:
    """The `--json` object: figures per strategy (in the suite's order) and gate verdicts."""
    by_strategy: dict[str, list[CaseResult]] = {name: [] for name in strategy_names}
    for result in results:
        by_strategy.setdefault(result.strategy, []).append(result)
    strategies = {name: strategy_summary(found) for name, found in by_strategy.items()}
    scores = {
        name: sum(r.score for r in found) / len(found) if found else 0.0
        for name, found in by_strategy.items()
    }
    return {
        "suite": suite_name,
        "strategies": strategies,
        "gates": evaluate_gates(strategies, scores, gates),
    }


def gates_hold(summary: dict[str, Any]) -> bool:
    return all(gate["passed"] for gate in summary["gates"])
