"""The report's charts as PNG bytes, drawn with matplotlib on the Agg canvas.

Each figure gets its own `FigureCanvasAgg`, never pyplot: no global backend or figure state,
so charts can be drawn from any thread and nothing changes at import time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.report_tables import metric_names, strategies
from evaluation.results import CaseResult

# Colour-blind-safe (Okabe-Ito), one per bar group; cycled when there are more metrics.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
_DPI = 110


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _style(axes: Any) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", color="#e5e7eb", linewidth=0.8)
    axes.set_axisbelow(True)


def quality_chart(summary: dict[str, Any]) -> bytes | None:
    """Grouped bars: pass rate and every metric, per strategy (None without strategies)."""
    entries = strategies(summary)
    if not entries:
        return None
    series = ["pass_rate", *metric_names(summary)]
    names = list(entries)
    width = 0.8 / len(series)
    figure = _figure(11.0, 3.2)
    axes = figure.add_subplot()
    for i, metric in enumerate(series):
        values = [
            float(entry.get("pass_rate", 0.0))
            if metric == "pass_rate"
            else float(entry.get("metrics", {}).get(metric, float("nan")))
            for entry in entries.values()
        ]
        offsets = [x - 0.4 + width * (i + 0.5) for x in range(len(names))]
        label = "pass rate" if metric == "pass_rate" else metric
        axes.bar(offsets, values, width * 0.92, label=label, color=PALETTE[i % len(PALETTE)])
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("share of cases / mean score")
    axes.set_title("Quality per strategy", loc="left", fontweight="bold")
    axes.yaxis.set_major_formatter("{x:.0%}")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _style(axes)
    return _png(figure)


def cost_chart(summary: dict[str, Any]) -> bytes | None:
    """Pass rate against mean prompt tokens, one labelled point per strategy."""
    entries = strategies(summary)
    if not entries:
        return None
    figure = _figure(6.4, 3.8)
    axes = figure.add_subplot()
    for i, (name, entry) in enumerate(entries.items()):
        x = float(entry.get("prompt_tokens", 0.0))
        y = float(entry.get("pass_rate", 0.0))
        axes.scatter([x], [y], s=90, color=PALETTE[i % len(PALETTE)], zorder=3)
        axes.annotate(name, (x, y), xytext=(7, 6), textcoords="offset points", fontsize=9, zorder=4)
    # Room on the right for the rightmost point's label.
    most = max(float(entry.get("prompt_tokens", 0.0)) for entry in entries.values())
    axes.set_xlim(0, most * 1.25 + 1)
    axes.set_ylim(-0.05, 1.1)
    axes.yaxis.set_major_formatter("{x:.0%}")
    axes.set_xlabel("mean prompt tokens per case (the cost)")
    axes.set_ylabel("pass rate")
    axes.set_title("Quality against prompt tokens", loc="left", fontweight="bold")
    axes.grid(axis="x", color="#e5e7eb", linewidth=0.8)
    _style(axes)
    return _png(figure)


def latency_chart(results: Sequence[CaseResult], order: Sequence[str]) -> bytes | None:
    """Box plots of per-case latency per strategy (None when no case has an answer)."""
    latencies: dict[str, list[float]] = {name: [] for name in order}
    for result in results:
        if result.output is not None and result.error is None:
            latencies.setdefault(result.strategy, []).append(result.output.latency_ms)
    shown = {name: values for name, values in latencies.items() if values}
    if not shown:
        return None
    figure = _figure(6.4, 3.8)
    axes = figure.add_subplot()
    boxes = axes.boxplot(
        list(shown.values()),
        tick_labels=list(shown),
        patch_artist=True,
        widths=0.55,
        medianprops={"color": "#111827", "linewidth": 1.5},
        flierprops={"marker": "o", "markersize": 3, "markerfacecolor": "#9ca3af"},
    )
    for i, patch in enumerate(boxes["boxes"]):
        patch.set_facecolor(PALETTE[i % len(PALETTE)])
        patch.set_alpha(0.75)
    axes.set_ylim(bottom=0)
    axes.set_ylabel("latency per case (ms)")
    axes.set_title("Latency per strategy", loc="left", fontweight="bold")
    _style(axes)
    return _png(figure)
