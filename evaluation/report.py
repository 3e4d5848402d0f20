"""An evaluation run's outputs: the terminal table, results.jsonl, summary.json, report.md/.html."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from evaluation.report_html import render_html
from evaluation.report_tables import (
    Gate,
    Table,
    disagreements,
    gates,
    strategy_order,
    strategy_table,
)
from evaluation.results import CaseResult

# How many disagreeing cases report.md lists (report.html shows the answers side by side).
MARKDOWN_DISAGREEMENTS = 50


def write_outputs(
    out_dir: Path, suite_name: str, results: Sequence[CaseResult], summary: dict[str, Any]
) -> None:
    """Write results.jsonl, summary.json, report.md and report.html into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    generated_at = datetime.now(UTC)
    with (out_dir / "results.jsonl").open("w", encoding="utf-8") as handle:
        for result in results:
            handle.write(result.model_dump_json() + "\n")
    stamped = {**summary, "generated_at": generated_at.isoformat(timespec="seconds")}
    (out_dir / "summary.json").write_text(
        json.dumps(stamped, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / "report.md").write_text(
        render_markdown(suite_name, results, summary, generated_at), encoding="utf-8"
    )
    (out_dir / "report.html").write_text(
        render_html(suite_name, results, summary, generated_at), encoding="utf-8"
    )


def print_table(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print the per-strategy table and the gates: rich on a terminal, plain text otherwise."""
    console = console or Console()
    table = strategy_table(summary)
    gate_list = gates(summary)
    if console.is_terminal:
        _print_rich(console, table, gate_list)
        return
    lines = plain_table(table)
    if gate_list:
        lines += ["", "gates:"]
        lines += plain_table(_gate_table(gate_list))
        lines.append(_gate_verdict(gate_list))
    console.out("\n".join(lines), highlight=False)


def plain_table(table: Table) -> list[str]:
    """Columns padded with spaces, numbers right-aligned; no trailing spaces."""
    widths = [
        max(len(cell) for cell in column) for column in zip(table.headers, *table.rows, strict=True)
    ]
    lines = []
    for row in [table.headers, *table.rows]:
        cells = [
            cell.rjust(width) if numeric else cell.ljust(width)
            for cell, width, numeric in zip(row, widths, table.numeric, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _gate_table(gate_list: list[Gate]) -> Table:
    rows = [
        ["PASS" if gate.passed else "FAIL", gate.strategy, gate.metric, gate.value, gate.bound]
        for gate in gate_list
    ]
    headers = ["result", "strategy", "metric", "value", "bound"]
    return Table(headers=headers, rows=rows, numeric=[False, False, False, True, True])


def _gate_verdict(gate_list: list[Gate]) -> str:
    failed = [f"{gate.strategy} {gate.metric}" for gate in gate_list if not gate.passed]
    if not failed:
        return f"all gates hold ({len(gate_list)})"
    return f"FAILED {len(failed)} of {len(gate_list)} gates: " + ", ".join(failed)


def _print_rich(console: Console, table: Table, gate_list: list[Gate]) -> None:
    strategies = RichTable(title="strategies", title_justify="left", header_style="bold")
    for header, numeric in zip(table.headers, table.numeric, strict=True):
        strategies.add_column(header, justify="right" if numeric else "left")
    for row in table.rows:
        strategies.add_row(Text(row[0], style="bold"), *(Text(cell) for cell in row[1:]))
    console.print(strategies)
    if not gate_list:
        return
    rich_gates = RichTable(title="gates", title_justify="left", header_style="bold")
    for header in ("result", "strategy", "metric"):
        rich_gates.add_column(header)
    rich_gates.add_column("value", justify="right")
    rich_gates.add_column("bound", justify="right")
    for gate in gate_list:
        verdict = Text("PASS", style="bold green") if gate.passed else Text("FAIL", "bold red")
        style = "" if gate.passed else "red"
        cells = (gate.strategy, gate.metric, gate.value, gate.bound)
        rich_gates.add_row(verdict, *(Text(cell, style=style) for cell in cells))
    console.print(rich_gates)
    style = "green" if all(gate.passed for gate in gate_list) else "bold red"
    console.print(Text(_gate_verdict(gate_list), style=style))


def _md_cell(value: Any, limit: int = 300) -> str:
    """Text safe in a Markdown table cell: HTML escaped, pipes escaped, one line, bounded."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("`", "\\`")


def _md_table(table: Table) -> list[str]:
    align = ["---:" if numeric else "---" for numeric in table.numeric]
    lines = ["| " + " | ".join(_md_cell(header) for header in table.headers) + " |"]
    lines.append("| " + " | ".join(align) + " |")
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in table.rows]
    return lines


def render_markdown(
    suite_name: str,
    results: Sequence[CaseResult],
    summary: dict[str, Any],
    generated_at: datetime,
) -> str:
    """report.md: the strategy table, the gates and the disagreeing cases (charts: report.html)."""
    when = generated_at.strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {_md_cell(suite_name)}", "", f"ragtune eval, ran {when}.", ""]
    lines += ["## Strategies", "", *_md_table(strategy_table(summary)), ""]
    gate_list = gates(summary)
    if gate_list:
        gate_table = _gate_table(gate_list)
        for row in gate_table.rows:
            row[0] = "✅ PASS" if row[0] == "PASS" else "❌ **FAIL**"
        lines += ["## Gates", "", *_md_table(gate_table), "", _gate_verdict(gate_list), ""]
    lines += ["Charts (quality, cost, latency) are in report.html.", ""]
    order = strategy_order(summary, results)
    found = disagreements(results, order)
    lines += [f"## Where strategies disagree ({len(found)})", ""]
    if not found:
        lines += ["No case passed under one strategy and failed under another.", ""]
    for case in found[:MARKDOWN_DISAGREEMENTS]:
        lines += [f"### case {_md_cell(case.case_id)}", ""]
        if case.vars:
            lines += [
                f"- **{_md_cell(key)}**: {_md_cell(value)}" for key, value in case.vars.items()
            ]
            lines.append("")
        lines += ["| strategy | result | answer | failed assertions | retrieved |"]
        lines += ["| --- | --- | --- | --- | --- |"]
        for strategy, result in case.by_strategy.items():
            answer = result.output.answer if result.output is not None else ""
            if result.error:
                answer = f"error: {result.error}"
            failed = "; ".join(
                f"{item.metric}: {item.reason}" for item in case.failed_assertions(strategy)
            )
            sources = (
                ", ".join(f"{s.doc_id} ({s.score:.3f})" for s in result.output.retrieved)
                if result.output is not None
                else ""
            )
            verdict = "PASS" if result.passed else "FAIL"
            cells = [strategy, verdict, answer, failed, sources]
            lines.append("| " + " | ".join(_md_cell(cell) for cell in cells) + " |")
        lines.append("")
    if len(found) > MARKDOWN_DISAGREEMENTS:
        lines += [f"{len(found) - MARKDOWN_DISAGREEMENTS} more are in results.jsonl.", ""]
    return "\n".join(lines)
