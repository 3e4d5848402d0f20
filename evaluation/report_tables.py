"""What every report shows, as plain rows: the per-strategy table, the gates, the disagreements.

The terminal table, report.md and report.html all draw from here, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evaluation.results import AssertionResult, CaseResult


@dataclass(frozen=True)
class Table:
    """Column headers and formatted rows; `numeric[i]` says column i is right-aligned."""

    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]


@dataclass(frozen=True)
class Gate:
    """One gate of the summary, formatted."""

    strategy: str
    metric: str
    passed: bool
    value: str
    bound: str
    comparison: str  # "value >= bound" or similar when the summary says which; else ""


@dataclass(frozen=True)
class Disagreement:
    """A case some strategy passed and another failed, with every strategy's result."""

    case_id: str
    vars: dict[str, Any]
    by_strategy: dict[str, CaseResult]

    def failed_assertions(self, strategy: str) -> list[AssertionResult]:
        """The assertions that failed for `strategy` on this case."""
        return [a for a in self.by_strategy[strategy].assertions if not a.passed]


def strategies(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The summary's per-strategy objects, in the suite's order."""
    found = summary.get("strategies", {})
    return found if isinstance(found, dict) else {}


def metric_names(summary: dict[str, Any]) -> list[str]:
    """Every metric any strategy reports, in first-seen order."""
    names: dict[str, None] = {}
    for entry in strategies(summary).values():
        for name in entry.get("metrics", {}):
            names.setdefault(name, None)
    return list(names)


def percent(value: Any) -> str:
    """0.953 -> '95.3%'; a missing value -> '-'."""
    return f"{100 * float(value):.1f}%" if isinstance(value, int | float) else "-"


def millis(value: Any) -> str:
    """A latency in ms, to the millisecond."""
    return f"{float(value):,.0f} ms" if isinstance(value, int | float) else "-"


def number(value: Any, digits: int = 1) -> str:
    """A mean token count or any other float, rounded."""
    if not isinstance(value, int | float):
        return "-"
    return f"{float(value):,.{digits}f}"


def gate_value(metric: str, value: Any) -> str:
    """A gate's value or bound in the metric's own unit."""
    if metric.startswith("latency"):
        return millis(value)
    if metric in {"prompt_tokens", "completion_tokens"}:
        return number(value)
    if metric == "errors":
        return number(value, 0)
    return number(value, 3)


def strategy_table(summary: dict[str, Any]) -> Table:
    """One row per strategy: cases, pass rate, every metric, latency, tokens, errors."""
    metrics = metric_names(summary)
    headers = ["strategy", "cases", "pass rate", *metrics]
    headers += ["p50 latency", "p95 latency", "prompt tok", "completion tok", "errors"]
    rows: list[list[str]] = []
    for name, entry in strategies(summary).items():
        latency = entry.get("latency_ms", {})
        row = [name, number(entry.get("cases"), 0), percent(entry.get("pass_rate"))]
        row += [percent(entry.get("metrics", {}).get(metric)) for metric in metrics]
        row += [millis(latency.get("p50")), millis(latency.get("p95"))]
        row += [number(entry.get("prompt_tokens")), number(entry.get("completion_tokens"))]
        row.append(number(entry.get("errors"), 0))
        rows.append(row)
    return Table(headers=headers, rows=rows, numeric=[False] + [True] * (len(headers) - 1))


def best_cells(summary: dict[str, Any]) -> set[tuple[int, int]]:
    """(row, column) of `strategy_table`'s best value per column: the highest rate, the lowest
    latency, tokens and errors; none where every strategy ties."""
    entries = list(strategies(summary).values())
    metrics = metric_names(summary)
    columns: list[tuple[Any, bool]] = [(lambda e: e.get("pass_rate"), True)]
    columns += [(lambda e, m=m: e.get("metrics", {}).get(m), True) for m in metrics]
    columns += [(lambda e, k=k: e.get("latency_ms", {}).get(k), False) for k in ("p50", "p95")]
    columns += [(lambda e, k=k: e.get(k), False) for k in ("prompt_tokens", "completion_tokens")]
    columns.append((lambda e: e.get("errors"), False))
    found: set[tuple[int, int]] = set()
    for offset, (read, higher) in enumerate(columns):
        values = [read(entry) for entry in entries]
        numbers = [v for v in values if isinstance(v, int | float)]
        if len(set(numbers)) < 2:
            continue
        best = max(numbers) if higher else min(numbers)
        found |= {(row, 2 + offset) for row, value in enumerate(values) if value == best}
    return found


_COMPARISONS = {"min": ">=", "max": "<=", ">=": ">=", "<=": "<="}


def gates(summary: dict[str, Any]) -> list[Gate]:
    """The summary's gates, formatted, in the suite's order."""
    found: list[Gate] = []
    for gate in summary.get("gates", []):
        metric = str(gate.get("metric", ""))
        kind = str(gate.get("kind", gate.get("op", "")))
        comparison = f"value {_COMPARISONS[kind]} bound" if kind in _COMPARISONS else ""
        found.append(
            Gate(
                strategy=str(gate.get("strategy", "")),
                metric=metric,
                passed=bool(gate.get("passed")),
                value=gate_value(metric, gate.get("value")),
                bound=gate_value(metric, gate.get("bound")),
                comparison=comparison,
            )
        )
    return found


def disagreements(results: Sequence[CaseResult], order: Sequence[str]) -> list[Disagreement]:
    """Cases where at least one strategy passed and another failed (an error is a failure)."""
    by_case: dict[str, dict[str, CaseResult]] = {}
    for result in results:
        by_case.setdefault(result.case_id, {})[result.strategy] = result
    rank = {name: i for i, name in enumerate(order)}
    found: list[Disagreement] = []
    for case_id, by_strategy in by_case.items():
        verdicts = {result.passed for result in by_strategy.values()}
        if verdicts != {True, False}:
            continue
        ordered = dict(sorted(by_strategy.items(), key=lambda item: rank.get(item[0], len(rank))))
        first = next(iter(ordered.values()))
        found.append(Disagreement(case_id=case_id, vars=first.vars, by_strategy=ordered))
    return found


def strategy_order(summary: dict[str, Any], results: Sequence[CaseResult]) -> list[str]:
    """The summary's strategies, then any only the results name."""
    names = dict.fromkeys(strategies(summary))
    for result in results:
        names.setdefault(result.strategy, None)
    return list(names)
