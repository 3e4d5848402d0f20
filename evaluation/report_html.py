"""report.html: one self-contained page (CSS inline, charts as data: URIs, no external URL).

Everything from cases and answers is HTML-escaped by jinja2's autoescape; the page's
Content-Security-Policy also lets only its own inline script run, so a `<script>` in an answer
stays text even if escaping were ever bypassed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
from markupsafe import Markup

from evaluation import charts
from evaluation.report_tables import (
    best_cells,
    disagreements,
    gates,
    strategy_order,
    strategy_table,
)
from evaluation.results import CaseResult

# How many disagreeing cases the page shows; the rest are in results.jsonl.
MAX_DISAGREEMENTS = 200

# Marks each chart once it has loaded: data-rendered="true" when it decoded to its last row
# (drawn on a canvas: a truncated PNG still has a width, but its bottom rows stay transparent),
# its natural width, and the body with how many rendered. The browser test reads these back.
IMAGE_CHECK = (
    "function drawn(image) {"
    " if (!image.complete || image.naturalWidth === 0) { return false; }"
    " try { var canvas = document.createElement('canvas');"
    " canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;"
    " var context = canvas.getContext('2d'); context.drawImage(image, 0, 0);"
    " var row = context.getImageData(0, canvas.height - 1, canvas.width, 1).data;"
    " for (var i = 3; i < row.length; i += 4) { if (row[i] === 0) { return false; } }"
    " return true; } catch (error) { return false; } }"
    " window.addEventListener('load', function () {"
    " var images = document.querySelectorAll('img.chart'); var rendered = 0;"
    " images.forEach(function (image) { var ok = drawn(image);"
    " image.dataset.rendered = ok ? 'true' : 'false';"
    " image.dataset.naturalWidth = String(image.naturalWidth);"
    " if (ok) { rendered += 1; } });"
    " document.body.dataset.chartsRendered = rendered + '/' + images.length; });"
)


def _csp() -> Markup:
    digest = base64.b64encode(hashlib.sha256(IMAGE_CHECK.encode()).digest()).decode()
    # Markup: the policy's quotes must reach the attribute as they are (no user input in it).
    return Markup(
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'"
    )


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("evaluation", "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["data_uri"] = _data_uri
    environment.filters["as_json"] = _as_json
    return environment


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_json(value: Any) -> str:
    """A case variable as a person reads it: strings bare, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1, default=str)


def render_html(
    suite_name: str,
    results: Sequence[CaseResult],
    summary: dict[str, Any],
    generated_at: datetime,
) -> str:
    """The whole report page as one string."""
    order = strategy_order(summary, results)
    found = disagreements(results, order)
    chart_list = [
        (
            "Quality per strategy",
            "Pass rate and each metric's mean score, per strategy.",
            charts.quality_chart(summary),
        ),
        (
            "Quality against prompt tokens",
            "Up and to the left is better: more cases pass for fewer prompt tokens.",
            charts.cost_chart(summary),
        ),
        (
            "Latency",
            "Per-case latency: the box spans p25 to p75, the line is the median.",
            charts.latency_chart(results, order),
        ),
    ]
    gate_list = gates(summary)
    template = _environment().get_template("report.html.j2")
    return template.render(
        suite=suite_name,
        description=summary.get("description"),
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        csp=_csp(),
        script=IMAGE_CHECK,
        table=strategy_table(summary),
        best=best_cells(summary),
        charts=[(title, note, png) for title, note, png in chart_list if png is not None],
        gates=gate_list,
        failed_gates=[gate for gate in gate_list if not gate.passed],
        show_rule=any(gate.comparison for gate in gate_list),
        case_count=len({result.case_id for result in results}),
        result_count=len(results),
        disagreements=found[:MAX_DISAGREEMENTS],
        hidden=max(0, len(found) - MAX_DISAGREEMENTS),
        disagreement_count=len(found),
    )
