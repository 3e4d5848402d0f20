"""`ragtune adapters load|unload|status|audit` against a running server's admin API."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from cli.main import main
from service.app import create_app
from tests.conftest import TinyModel
from tests.fixtures.api import ADMIN_TOKEN, api_settings
from tests.fixtures.scripted_backend import ScriptedBackend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(
    tmp_path: Path, tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, ScriptedBackend]]:
    settings = api_settings(tmp_path, tiny_model.path)
    backend = ScriptedBackend()
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, lambda _: [backend]), port=port, log_level="warning"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    monkeypatch.setenv("RAGTUNE_ADMIN__TOKEN", ADMIN_TOKEN)
    yield f"http://127.0.0.1:{port}", backend
    uv.should_exit = True
    thread.join(30)


def test_load_status_unload_audit(
    server: tuple[str, ScriptedBackend], tiny_model: TinyModel, capsys: pytest.CaptureFixture[str]
) -> None:
    url, backend = server
    assert main(["adapters", "register", str(tiny_model.adapters["alpha"]), "--name", "alpha"]) == 0
    ref = next(line for line in capsys.readouterr().out.split() if line.startswith("alpha@"))
    ref = ref.rstrip(".,:")
    assert main(["adapters", "load", ref, "--url", url]) == 0
    assert ref in backend.adapters
    assert main(["adapters", "status", "--url", url]) == 0
    assert f'"{ref}"' in capsys.readouterr().out
    assert main(["adapters", "unload", ref, "--url", url]) == 0
    assert ref not in backend.adapters
    capsys.readouterr()
    assert main(["adapters", "audit", "--url", url]) == 0
    out = capsys.readouterr().out
    assert f"load {ref}: ok" in out
    assert f"unload {ref}: ok" in out


def test_errors_say_what_to_do(
    server: tuple[str, ScriptedBackend],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = server
    assert main(["adapters", "load", "nope@0123456789abcdef", "--url", url]) == 2
    assert "404" in capsys.readouterr().err
    assert main(["adapters", "status", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "start `ragtune serve` or pass --url" in capsys.readouterr().err
    monkeypatch.setenv("RAGTUNE_ADMIN__TOKEN", "another-token-entirely")
    assert main(["adapters", "status", "--url", url]) == 1
    assert "403: the admin token is wrong" in capsys.readouterr().err
    monkeypatch.delenv("RAGTUNE_ADMIN__TOKEN")
    assert main(["adapters", "status", "--url", url]) == 2
    assert "set RAGTUNE_ADMIN__TOKEN" in capsys.readouterr().err
