"""`ragtune adapters register / list / aliases / alias / rollback / unalias / delete`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from adapters.audit import AuditLog
from cli.main import main
from tests.conftest import TinyModel


def run_cli(*args: str) -> int:
    return main(["adapters", *args])


def test_cli_register_alias_rollback_list_delete(
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    archive = tmp_path / "beta.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in tiny_model.adapters["beta"].iterdir():
            zf.write(f, f"beta/{f.name}")

    assert run_cli("register", str(tiny_model.adapters["alpha"]), "--name", "sql") == 0
    assert run_cli("register", str(archive), "--name", "sql", "--alias", "prod") == 0
    out = capsys.readouterr().out
    a, b = (line.split()[1] for line in out.splitlines() if line.startswith("registered"))
    assert f"prod -> {b}" in out
    assert "running servers follow within 2s" in out

    assert run_cli("alias", "prod", a) == 0
    assert run_cli("rollback", "prod") == 0
    assert f"prod -> {b} (was {a})" in capsys.readouterr().out
    assert run_cli("delete", a) == 2  # prod keeps it as its rollback target
    assert "still used by alias prod" in capsys.readouterr().err
    assert run_cli("rollback", "nope") == 2
    assert run_cli("register", str(tiny_model.adapters["too-big"]), "--name", "big") == 2
    assert "rank 32" in capsys.readouterr().err

    assert run_cli("list") == 0
    table = capsys.readouterr().out
    assert a in table
    assert any(b in line and "prod" in line for line in table.splitlines())
    assert run_cli("list", "--json") == 0
    listed: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert [r["ref"] for r in listed] == [a, b]
    assert run_cli("aliases", "--json") == 0
    assert json.loads(capsys.readouterr().out)["prod"]["previous"] == a

    assert run_cli("unalias", "prod") == 0
    assert run_cli("delete", a) == 0
    log = AuditLog(tmp_path / "data" / "adapters" / "audit.jsonl").tail(100)
    assert [(e["action"], e["result"]) for e in log] == [
        ("register", "ok"),
        ("register", "ok"),
        ("alias", "ok"),
        ("alias", "ok"),
        ("rollback", "ok"),
        ("delete", "refused"),
        ("rollback", "refused"),
        ("register", "refused"),
        ("unalias", "ok"),
        ("delete", "ok"),
    ]
    assert all(e["actor"].startswith("cli:") for e in log)
    assert log[0]["detail"] == a


def test_cli_list_on_an_empty_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    assert run_cli("list") == 0
    assert "no adapters registered" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()  # listing creates nothing
