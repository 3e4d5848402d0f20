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


def test_register_keep_alias_leaves_an_existing_alias_alone(
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    alpha, beta = (str(tiny_model.adapters[n]) for n in ("alpha", "beta"))
    # The first time, the alias is made; afterwards (a retrained version aliased), it is kept.
    assert run_cli("register", alpha, "--name", "sql", "--alias", "prod", "--keep-alias") == 0
    first = capsys.readouterr().out.split()[1]
    assert run_cli("register", beta, "--name", "sql", "--alias", "prod") == 0
    second = capsys.readouterr().out.split()[1]
    assert run_cli("register", alpha, "--name", "sql", "--alias", "prod", "--keep-alias") == 0
    assert f"prod -> {second} (kept)" in capsys.readouterr().out
    assert run_cli("aliases", "--json") == 0
    assert json.loads(capsys.readouterr().out)["prod"]["target"] == second != first
    assert run_cli("register", alpha, "--name", "sql", "--keep-alias") == 2
    assert "--keep-alias needs --alias" in capsys.readouterr().err


def test_cli_list_on_an_empty_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    assert run_cli("list") == 0
    assert "no adapters registered" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()  # listing creates nothing


def test_cli_unalias_refuses_an_alias_a_route_uses(
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The rule the admin API applies: the routes file the server would load is consulted."""
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n"
        "  support:\n"
        "    kind: chat\n"
        "    adapter: prod\n"
        '    prompt: {system: "Be brief.", user: "{question}"}\n'
        "  other:\n"
        "    kind: chat\n"
        '    prompt: {system: "Be brief.", user: "{question}"}\n'
        "    overrides: {adapters: [base, spare]}\n"
    )
    monkeypatch.setenv("RAGTUNE_API__ROUTES_FILE", str(routes))
    adapter = str(tiny_model.adapters["alpha"])
    assert run_cli("register", adapter, "--name", "sql", "--alias", "prod") == 0
    assert run_cli("alias", "spare", "prod") == 0
    assert run_cli("alias", "free", "prod") == 0
    capsys.readouterr()

    assert run_cli("unalias", "prod") == 2
    err = capsys.readouterr().err
    assert "alias 'prod' is used by route 'support'" in err
    assert run_cli("unalias", "spare") == 2  # an allowed override counts too
    assert "route 'other'" in capsys.readouterr().err
    assert run_cli("aliases", "--json") == 0
    assert set(json.loads(capsys.readouterr().out)) == {"prod", "spare", "free"}

    assert run_cli("unalias", "free") == 0
    log = AuditLog(tmp_path / "data" / "adapters" / "audit.jsonl").tail(100)
    assert [(e["action"], e["target"], e["result"]) for e in log[-3:]] == [
        ("unalias", "prod", "refused"),
        ("unalias", "spare", "refused"),
        ("unalias", "free", "ok"),
    ]


def test_cli_tables_list_every_version_and_alias(
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    assert run_cli("register", str(tiny_model.adapters["alpha"]), "--name", "sql") == 0
    assert run_cli("register", str(tiny_model.adapters["beta"]), "--name", "sql") == 0
    a, b = (
        line.split()[1] for line in capsys.readouterr().out.splitlines() if "registered" in line
    )
    assert run_cli("alias", "prod", a) == 0
    assert run_cli("alias", "prod", b) == 0
    capsys.readouterr()

    assert run_cli("list") == 0
    header, *rows = capsys.readouterr().out.splitlines()  # piped: one line a row, no wrapping
    assert header.split() == ["REF", "RANK", "BYTES", "CREATED", "(UTC)", "ALIASES"]
    assert [row.split()[0] for row in rows] == [a, b]
    assert rows[0].split()[-1] == "-"
    assert rows[1].split()[-1] == "prod"
    assert all(row == row.rstrip() for row in rows)

    assert run_cli("aliases") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["ALIAS", "TARGET", "PREVIOUS"]
    assert row.split() == ["prod", b, a]
