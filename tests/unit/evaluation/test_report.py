"""The run's outputs: the terminal table, results.jsonl, summary.json, report.md and report.html."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from evaluation.report import print_table, render_markdown, write_outputs
from evaluation.report_html import IMAGE_CHECK, render_html
from evaluation.results import CaseResult
from tests.fixtures.eval_results import case_result, results, summary

WHEN = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
PNG_SRC = re.compile(r'<img class="chart" alt="([^"]*)" src="data:image/png;base64,([^"]+)"')


def plain(summary_: dict[str, object]) -> str:
    buffer = io.StringIO()
    print_table(summary_, Console(file=buffer, force_terminal=False, width=80))
    return buffer.getvalue()


def test_plain_table_has_every_column_and_no_trailing_spaces() -> None:
    text = plain(summary())
    lines = text.splitlines()
    assert lines[0].split() == [
        "strategy", "cases", "pass", "rate", "label", "word-count", "p50", "latency", "p95",
        "latency", "prompt", "tok", "completion", "tok", "errors",
    ]  # fmt: skip
    rag = next(line for line in lines if line.startswith("rag "))
    assert rag.split() == [
        "rag", "4", "75.0%", "75.0%", "100.0%", "220", "ms", "240", "ms", "520.0", "3.0", "0",
    ]  # fmt: skip
    assert all(line == line.rstrip() for line in lines)
    assert "\x1b[" not in text  # no colour codes when stdout is not a terminal
    # Narrower than the table: plain text never wraps a row.
    assert max(len(line) for line in lines) > 80


def test_plain_table_makes_the_failing_gate_stand_out() -> None:
    lines = plain(summary()).splitlines()
    assert any(line.split()[:3] == ["FAIL", "few-shot", "pass_rate"] for line in lines if line)
    assert any(line.split()[:3] == ["PASS", "rag", "pass_rate"] for line in lines if line)
    assert lines[-1] == "FAILED 1 of 2 gates: few-shot pass_rate"


def test_plain_table_says_when_every_gate_holds() -> None:
    gates = [{"strategy": "rag", "metric": "errors", "passed": True, "value": 0, "bound": 0}]
    assert plain(summary(gates=gates)).splitlines()[-1] == "all gates hold (1)"


def test_terminal_table_prints_fail_in_red() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="standard", width=200)
    print_table(summary(), console)
    text = buffer.getvalue()
    assert "\x1b[1;31mFAIL" in text
    assert "\x1b[1;32mPASS" in text
    assert "few-shot" in text


def test_write_outputs_writes_the_four_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_outputs(out, "Review sentiment", results(), summary())
    assert sorted(p.name for p in out.iterdir()) == [
        "report.html",
        "report.md",
        "results.jsonl",
        "summary.json",
    ]
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert [CaseResult.model_validate_json(line) for line in lines] == results()
    written = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    generated_at = written.pop("generated_at")
    assert written == summary()
    assert datetime.fromisoformat(generated_at).tzinfo is not None


def test_markdown_has_the_tables_and_only_the_disagreeing_cases() -> None:
    text = render_markdown("Review sentiment", results(), summary(), WHEN)
    assert text.startswith("# Review sentiment\n")
    assert "2026-12-01 06:00 UTC" in text
    header = "| strategy | cases | pass rate | label | word-count | p50 latency |"
    assert header in text
    assert "| few-shot | 4 | 50.0% | 50.0% | 100.0% | 170 ms | 190 ms | 310.0 | 3.0 | 0 |" in text
    assert "| ❌ **FAIL** | few-shot | pass_rate | 0.500 | 0.900 |" in text
    assert "## Where strategies disagree (2)" in text
    assert "### case c2" in text
    assert "### case c3" in text
    assert "### case c1" not in text  # every strategy passed
    assert "### case c4" not in text  # every strategy failed
    assert "| rag | PASS | positive |  | doc-c3 (0.812) |" in text
    assert "label: expected 'positive'" in text


def test_markdown_escapes_html_and_table_syntax() -> None:
    bad = {"vars": {"text": "a | b <script>x</script>"}}
    both = [case_result("c3", name).model_copy(update=bad) for name in ("zero-shot", "rag")]
    text = render_markdown("<b>suite</b>", both, summary(), WHEN)
    assert "<script>" not in text
    assert "<b>" not in text
    assert "a \\| b &lt;script&gt;x&lt;/script&gt;" in text


def test_html_is_self_contained_with_three_decodable_charts() -> None:
    page = render_html("Review sentiment", results(), summary(), WHEN)
    charts = PNG_SRC.findall(page)
    assert [alt for alt, _ in charts] == [
        "Quality per strategy",
        "Quality against prompt tokens",
        "Latency",
    ]
    for _, data in charts:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        assert image.format == "PNG"
        image.load()  # the whole image decodes, not only its header
        assert image.width > 300
        assert image.height > 200
    # Nothing is fetched from elsewhere: no URL in any attribute, no stylesheet link.
    assert "http://" not in page
    assert "https://" not in page
    assert "<link" not in page
    assert re.findall(r'\bsrc="(?!data:image/png;base64,)', page) == []


def test_html_shows_the_strategy_table_and_the_gates() -> None:
    page = render_html("Review sentiment", results(), summary(), WHEN)
    assert "<h1>Review sentiment</h1>" in page
    assert "ran 2026-12-01 06:00 UTC" in page
    assert "4 cases \u00d7 3 strategies = 12 results" in page
    rows = dict(re.findall(r"<tr><td class=\"\"><strong>([^<]+)</strong></td>(.*?)</tr>", page))
    assert list(rows) == ["zero-shot", "few-shot", "rag"]
    # The best of each column stands out: rag's rates, zero-shot's latency and tokens.
    assert '<td class="num best">75.0%</td>' in rows["rag"]
    assert '<td class="num">25.0%</td>' in rows["zero-shot"]
    assert '<td class="num best">40.0</td>' in rows["zero-shot"]
    assert '<td class="num best">120 ms</td>' in rows["zero-shot"]
    # Ties (word-count, completion tokens, errors) mark nobody.
    assert '<td class="num best">100.0%</td>' not in page
    assert '<td class="num best">0</td>' not in page
    assert "1 of 2 gates failed:" in page
    failing = re.search(r'<tr class="gate-fail">(.*?)</tr>', page, re.S)
    assert failing is not None
    assert "few-shot" in failing.group(1)
    assert "FAIL" in failing.group(1)


def test_html_puts_disagreeing_answers_side_by_side() -> None:
    page = render_html("Review sentiment", results(), summary(), WHEN)
    cases = re.findall(r'<div class="case">.*?</div>\n</div>\n', page, re.S)
    assert len(cases) == 2
    c2 = next(case for case in cases if "<code>c2</code>" in case)
    sides = re.findall(r'<div class="side (pass|fail)">\s*<h4>([^<]+) <span', c2)
    assert sides == [("fail", "zero-shot"), ("pass", "few-shot"), ("pass", "rag")]
    assert "wrong-zero-shot &lt;i&gt;negative&lt;/i&gt;" in c2
    assert "<code>equals</code> (label): expected &#39;negative&#39;" in c2
    assert "<code>doc-c2</code> · 0.812" in c2
    assert "snippet about c2 &lt;em&gt;here&lt;/em&gt;" in c2
    assert "<code>c1</code>" not in page
    assert "<code>c4</code>" not in page


def test_html_escapes_everything_from_cases_and_answers() -> None:
    page = render_html("<script>alert(1)</script>", results(), summary(), WHEN)
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert scripts == [IMAGE_CHECK]
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt; · ragtune eval</title>" in page
    # The policy lets only the report's own script run, by its hash.
    digest = base64.b64encode(hashlib.sha256(IMAGE_CHECK.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page


def test_html_shows_errors_and_leaves_them_out_of_the_latency_chart() -> None:
    failed = [case_result(case, "rag", error="upstream timed out <x>") for case in ("c1", "c2")]
    others = [case_result(case, "zero-shot") for case in ("c1", "c2")]
    page = render_html("s", [*failed, *others], summary(), WHEN)
    assert '<div class="error">upstream timed out &lt;x&gt;</div>' in page
    assert len(PNG_SRC.findall(page)) == 3


@pytest.mark.parametrize("strategies", [{}, None])
def test_html_without_strategies_or_results_still_renders(strategies: object) -> None:
    empty = {"suite": "s", "strategies": strategies, "gates": []}
    page = render_html("s", [], empty, WHEN)
    assert PNG_SRC.findall(page) == []
    assert "No case passed under one strategy and failed under another." in page
    assert plain(empty).splitlines() == [
        "strategy  cases  pass rate  p50 latency  p95 latency  prompt tok  completion tok  errors"
    ]
