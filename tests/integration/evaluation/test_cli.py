"""`ragtune eval run` and `ragtune eval compare` as a user runs them: exit codes, --json,
--out, and Ctrl-C keeping what ran (on the tiny model)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import main
from tests.integration.evaluation.conftest import SuiteWriter, World


@pytest.fixture
def env(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    for name, value in world.env().items():
        monkeypatch.setenv(name, value)
    return world


def test_gates_hold_exit_0_with_the_documented_json(
    env: World, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "run", str(write_suite()), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"suite", "strategies", "gates"}
    assert summary["suite"] == "test suite"
    assert list(summary["strategies"]) == ["plain", "rag", "tuned"]
    for figures in summary["strategies"].values():
        assert set(figures) == {
            "cases", "errors", "pass_rate", "metrics", "latency_ms", "prompt_tokens",
            "completion_tokens",
        }  # fmt: skip
        assert figures["cases"] == 3
        assert figures["errors"] == 0
        assert figures["metrics"] == {"not-contains": 1.0}
        assert set(figures["latency_ms"]) == {"p50", "p95"}
    assert summary["gates"] == [
        {"strategy": "plain", "metric": "pass_rate", "passed": True, "value": 1.0, "bound": 1.0}
    ]


def test_a_failing_gate_exits_1_and_the_table_names_it(
    env: World, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(
        **{"assert": [{"type": "contains", "value": "zzzqqq-never", "metric": "marker"}]},
        gates=[{"strategy": "rag", "metric": "marker", "min": 0.5}],
    )
    assert main(["eval", "run", str(suite), "--limit", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "marker" in out


def test_a_bad_suite_exits_2_before_any_case_runs(
    env: World, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    suite = write_suite(strateggies=[])
    assert main(["eval", "run", str(suite), "--out", str(out)]) == 2
    assert "strateggies" in capsys.readouterr().err
    bad_route = write_suite(strategies=[{"name": "x", "route": "nowhere"}], gates=[])
    assert main(["eval", "run", str(bad_route), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "strategy 'x'" in err
    assert "nowhere" in err
    assert not out.exists()
    cache = env.settings.data_dir / "eval-cache" / "answers.sqlite3"
    assert not cache.exists() or _cached(cache) == 0


def test_out_writes_the_reports_and_compare_reads_them(
    env: World, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    suite = write_suite()
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["eval", "run", str(suite), "--out", str(a), "--filter-strategy", "plain"]) == 0
    assert main(["eval", "run", str(suite), "--out", str(b), "--no-cache"]) == 0
    for name in ("results.jsonl", "summary.json", "report.md", "report.html"):
        assert (a / name).is_file()
    assert len((a / "results.jsonl").read_text().splitlines()) == 3
    assert len((b / "results.jsonl").read_text().splitlines()) == 9
    capsys.readouterr()
    assert main(["eval", "compare", str(a / "summary.json"), str(b / "summary.json")]) == 0
    assert "rag" in capsys.readouterr().out


def test_an_unknown_strategy_filter_exits_2(
    env: World, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "run", str(write_suite()), "--filter-strategy", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def _cached(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM answers").fetchone()[0]
    return count


def test_ctrl_c_exits_130_and_writes_what_ran(
    world: World, write_suite: SuiteWriter, tmp_path: Path
) -> None:
    cases = [{"id": f"c{i}", "vars": {"q": f"Tell me a long story number {i}"}} for i in range(60)]
    suite = write_suite(
        cases, strategies=[{"name": "long", "route": "chat-plain", "max_tokens": 64}], gates=[]
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cli.main", "eval", "run", str(suite), "--out", str(out)]
    process = subprocess.Popen(
        command,
        env=os.environ | world.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    cache = world.settings.data_dir / "eval-cache" / "answers.sqlite3"
    deadline = time.monotonic() + 240
    while not (cache.exists() and _cached(cache) >= 1):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no result within 240 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err
    lines = (out / "results.jsonl").read_text().splitlines()
    assert 1 <= len(lines) < 60
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategies"]["long"]["cases"] == len(lines)
