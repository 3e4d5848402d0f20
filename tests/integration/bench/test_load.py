"""bench/load.py: a short run on a server it starts itself (the tiny model, two LoRA versions
behind an alias), and its refusal of anything but loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.load import KINDS, loopback_url, main

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000",
        "http://example.com:8000",
        "http://localhost.example.com:8000",
        "http://0.0.0.0:8000",
        "ftp://127.0.0.1/",
    ],
)
def test_refuses_a_url_off_loopback(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--url", url])
    assert exited.value.code == 2
    assert "not on loopback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/", "http://localhost:8000", "http://[::1]:8000", "http://127.3.2.1"],
)
def test_takes_a_loopback_url(url: str) -> None:
    assert loopback_url(url) == url.rstrip("/")


@pytest.mark.slow
def test_a_short_run_has_every_kind_no_errors_flips_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    command = [sys.executable, "-m", "bench.load", "--duration", "10", "--warmup", "3"]
    command += ["--clients", "4", "--flip-every", "2", "--max-tokens", "8", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    why = run.stdout + run.stderr[-3000:]
    # Exit 1 only for a failure the report names: here, at most memory that is not flat.
    assert run.returncode == (0 if report["memory"]["flat"] else 1), why
    assert report["verdict"]["passed"] == (run.returncode == 0), why
    assert set(report["kinds"]) == set(KINDS)
    # On a busy machine a 10 s window may measure only a few requests of a kind: every kind
    # must have run, the window must have measured some.
    for kind, figures in report["kinds"].items():
        assert figures["requests"] > 0, (kind, why)
        assert figures["errors"] == 0, (kind, figures["error_examples"])
    overall = report["overall"]
    assert overall["errors"] == 0, why
    assert overall["measured"] > 0, why
    assert overall["p50_ms"] <= overall["p95_ms"] <= overall["p99_ms"], why
    flips = report["flips"]
    assert flips["errors"] == 0, flips["error_examples"]
    # The flipper pointed the alias at the other version (at least once), and only the two
    # versions answered the adapter routes.
    first, other = flips["versions"]
    assert other in flips["versions_seen"], why
    assert set(flips["versions_seen"]) <= {first, other}
    answered = set(report["kinds"]["chat-adapter"]["versions_seen"])
    answered |= set(report["kinds"]["chat-adapter-stream"]["versions_seen"])
    answered |= set(report["kinds"]["openai-stream"]["versions_seen"])
    assert answered, why
    assert answered <= {first, other}, why
    # The server's own stage times, read from its /metrics around the measured window.
    assert "generate" in report["server_stage_ms"]["tuned"], why
    memory = report["memory"]
    assert all(memory[f"{p}_mib"] > 0 for p in ("start", "after_warmup", "end"))
    assert len(memory["series_mib"]) >= 2
    assert "shared by the server and these clients" in run.stdout
