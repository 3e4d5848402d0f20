"""`ragtune eval compare A B`: what changed between two runs' summary.json files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from evaluation.report import plain_table
from evaluation.report_tables import Table, gate_value, millis, percent
from ragtune.errors import InvalidInput

Status = Literal["better", "worse", "same", "changed", "added", "removed"]

# Metrics where a smaller value is the better one; every other metric is a score or a rate.
LOWER_IS_BETTER = {"latency_p50", "latency_p95", "prompt_tokens", "completion_tokens", "errors"}
# Neither better nor worse when they move: the suite changed, not the strategy.
NEUTRAL = {"cases"}


class _Strategy(BaseModel):
    model_config = ConfigDict(extra="allow")

    cases: int
    errors: int
    pass_rate: float
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    prompt_tokens: float
    completion_tokens: float


class _Gate(BaseModel):
    model_config = ConfigDict(extra="allow")

    strategy: str
    metric: str
    passed: bool
    value: float
    bound: float


class _Summary(BaseModel):
    """summary.json as `ragtune eval run --out` writes it (extra keys such as generated_at pass)."""

    model_config = ConfigDict(extra="allow")

    suite: str
    strategies: dict[str, _Strategy]
    gates: list[_Gate] = []


@dataclass(frozen=True)
class Change:
    """One metric of one strategy in run A and in run B (None: absent from that run)."""

    strategy: str
    metric: str
    before: float | None
    after: float | None
    delta: float | None  # after - before, when both runs have the metric
    status: Status  # whether it improved, regressed, stayed, or is in one run only

    @classmethod
    def of(cls, strategy: str, metric: str, before: float | None, after: float | None) -> Change:
        """The change from `before` to `after`, with its delta and what it means."""
        delta = None if before is None or after is None else after - before
        return cls(strategy, metric, before, after, delta, _status(metric, before, after))


def _status(metric: str, before: float | None, after: float | None) -> Status:
    if before is None:
        return "added"
    if after is None:
        return "removed"
    delta = after - before
    if abs(delta) < 1e-9:
        return "same"
    if metric in NEUTRAL:
        return "changed"
    better = delta < 0 if metric in LOWER_IS_BETTER else delta > 0
    return "better" if better else "worse"


@dataclass(frozen=True)
class GateChange:
    """A gate whose verdict differs between the runs (None: the run has no such gate)."""

    strategy: str
    metric: str
    before: bool | None
    after: bool | None


@dataclass(frozen=True)
class Comparison:
    """Everything that differs between run A and run B."""

    a: Path
    b: Path
    suite_a: str
    suite_b: str
    changes: list[Change]
    added_strategies: list[str]
    removed_strategies: list[str]
    gates: list[GateChange]


def load_summary(path: Path) -> _Summary:
    """Read and check one summary.json (a run's --out folder works too)."""
    if path.is_dir():
        path = path / "summary.json"
    hint = "pass the summary.json that `ragtune eval run --out DIR` wrote"
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not a text file ({exc.reason}); {hint}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{path}: not JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); {hint}"
        ) from exc
    try:
        return _Summary.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise InvalidInput(
            f"{path}: not a summary.json: {where}: {first['msg']}{more}; {hint}"
        ) from exc


def _metrics(entry: _Strategy) -> dict[str, float]:
    """A strategy's metrics under the names gates use."""
    found = {"pass_rate": entry.pass_rate}
    found.update(entry.metrics)
    for key in ("p50", "p95"):
        if key in entry.latency_ms:
            found[f"latency_{key}"] = entry.latency_ms[key]
    found["prompt_tokens"] = entry.prompt_tokens
    found["completion_tokens"] = entry.completion_tokens
    found["errors"] = float(entry.errors)
    found["cases"] = float(entry.cases)
    return found


def _gates(summary: _Summary) -> dict[tuple[str, str, int], bool]:
    """Verdicts keyed by strategy, metric and occurrence (a min and a max gate share a metric)."""
    seen: dict[tuple[str, str], int] = {}
    found: dict[tuple[str, str, int], bool] = {}
    for gate in summary.gates:
        n = seen[(gate.strategy, gate.metric)] = seen.get((gate.strategy, gate.metric), -1) + 1
        found[(gate.strategy, gate.metric, n)] = gate.passed
    return found


def compare(a: Path, b: Path) -> Comparison:
    """Compare two runs' summary.json files, strategy by strategy and metric by metric."""
    before, after = load_summary(a), load_summary(b)
    names = list(dict.fromkeys([*before.strategies, *after.strategies]))
    changes: list[Change] = []
    for name in names:
        old = _metrics(before.strategies[name]) if name in before.strategies else {}
        new = _metrics(after.strategies[name]) if name in after.strategies else {}
        for metric in dict.fromkeys([*old, *new]):
            changes.append(Change.of(name, metric, old.get(metric), new.get(metric)))
    old_gates, new_gates = _gates(before), _gates(after)
    gates = [
        GateChange(key[0], key[1], old_gates.get(key), new_gates.get(key))
        for key in dict.fromkeys([*old_gates, *new_gates])
        if old_gates.get(key) != new_gates.get(key)
    ]
    return Comparison(
        a=a,
        b=b,
        suite_a=before.suite,
        suite_b=after.suite,
        changes=changes,
        added_strategies=[n for n in after.strategies if n not in before.strategies],
        removed_strategies=[n for n in before.strategies if n not in after.strategies],
        gates=gates,
    )


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric.startswith("latency") or metric in LOWER_IS_BETTER or metric in NEUTRAL:
        return gate_value(metric, value)
    return percent(value)


def _delta(change: Change) -> str:
    delta = change.delta
    if delta is None or change.status == "same":
        return ""
    metric = change.metric
    if metric.startswith("latency"):
        return ("+" if delta >= 0 else "-") + millis(abs(delta))
    if metric in LOWER_IS_BETTER or metric in NEUTRAL:
        return f"{delta:+,.1f}" if metric.endswith("tokens") else f"{delta:+,.0f}"
    return f"{100 * delta:+.1f} pp"


def _verdict(passed: bool | None) -> str:
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def _row(c: Change) -> list[str]:
    before, after = _value(c.metric, c.before), _value(c.metric, c.after)
    return [c.strategy, c.metric, before, after, _delta(c), c.status]


def comparison_table(comparison: Comparison, *, only_changed: bool = False) -> Table:
    """The comparison's rows: strategy, metric, A, B, delta and what the change means."""
    rows = [_row(c) for c in comparison.changes if not only_changed or c.status != "same"]
    headers = ["strategy", "metric", "A", "B", "delta", "change"]
    return Table(headers=headers, rows=rows, numeric=[False, False, True, True, True, False])


_STYLES = {"better": "green", "worse": "bold red", "added": "cyan", "removed": "magenta"}


def print_comparison(comparison: Comparison, console: Console | None = None) -> None:
    """Print what changed from A to B: rich on a terminal, plain text otherwise."""
    console = console or Console()
    heading = [f"A: {comparison.a} ({comparison.suite_a})"]
    heading.append(f"B: {comparison.b} ({comparison.suite_b})")
    if comparison.added_strategies:
        heading.append("strategies added in B: " + ", ".join(comparison.added_strategies))
    if comparison.removed_strategies:
        heading.append("strategies removed in B: " + ", ".join(comparison.removed_strategies))
    table = comparison_table(comparison, only_changed=True)
    same = sum(1 for change in comparison.changes if change.status == "same")
    if not table.rows:
        heading.append(f"no metric changed ({same} compared)")
    elif same:
        heading.append(f"{same} unchanged metrics not shown")
    gate_lines = [
        f"gate {g.strategy} {g.metric}: {_verdict(g.before)} -> {_verdict(g.after)}"
        for g in comparison.gates
    ]
    if not console.is_terminal:
        lines = [*heading, *(["", *plain_table(table)] if table.rows else [])]
        if gate_lines:
            lines += ["", *gate_lines]
        console.out("\n".join(line.rstrip() for line in lines), highlight=False)
        return
    for line in heading:
        console.print(Text(line))
    rich_table = RichTable(header_style="bold")
    for header, numeric in zip(table.headers, table.numeric, strict=True):
        rich_table.add_column(header, justify="right" if numeric else "left")
    for row in table.rows:
        style = _STYLES.get(row[-1], "dim" if row[-1] == "same" else "")
        rich_table.add_row(*(Text(cell) for cell in row[:-1]), Text(row[-1], style=style))
    if table.rows:
        console.print(rich_table)
    for gate, line in zip(comparison.gates, gate_lines, strict=True):
        console.print(Text(line, style="bold red" if gate.after is False else "green"))
