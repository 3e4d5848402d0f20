"""The `ragtune` command's frame: help, usage errors, settings errors, Ctrl-C, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from cli.main import main

COMMANDS = ("ingest", "search", "eval", "adapters", "model", "vllm", "generate", "serve")
GROUPS = (
    ["eval"],
    ["eval", "retrieval"],
    ["adapters"],
    ["adapters", "unalias"],
    ["model"],
    ["model", "prepare"],
    ["vllm"],
    ["vllm", "serve"],
    ["ingest"],
    ["search"],
    ["generate"],
    ["serve"],
)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f" {command} " in out, command


@pytest.mark.parametrize("argv", GROUPS, ids=" ".join)
def test_help_works_even_with_bad_settings(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_CHUNKING__OVERLAP", "-3")
    for flag in ("--help", "-h"):
        assert main([*argv, flag]) == 0
        captured = capsys.readouterr()
        assert f"Usage: ragtune {' '.join(argv)}" in captured.out
        assert not captured.err


def test_bad_settings_stop_a_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_CHUNKING__OVERLAP", "-3")
    assert main(["model", "path"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ragtune: error: invalid settings: RAGTUNE_CHUNKING__OVERLAP: ")
    assert len(err.splitlines()) == 1


def test_a_value_that_is_not_json_is_bad_settings_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_LLM__VLLM_REPLICAS", "http://a:8000")
    assert main(["model", "path"]) == 2
    err = capsys.readouterr().err
    assert err.startswith('ragtune: error: invalid settings: error parsing value for field "llm"')
    assert "are JSON" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "No such command 'nope'"),
        (["search", "x", "--top-k", "many"], "Invalid value for '--top-k'"),
        (["search", "x", "--mode", "fuzzy"], "'fuzzy' is not one of 'dense', 'sparse', 'hybrid'"),
        (["ingest", ".", "--nope"], "No such option: --nope"),
        (["adapters", "alias", "prod"], "Missing argument 'REF'"),
        (["adapters", "train", "--data", "x.jsonl"], "Missing option '--out'"),
    ],
)
def test_usage_errors_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.replace("│", " ").split())  # rich wraps it in a panel
    assert "Traceback" not in err


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "Usage: ragtune" in capsys.readouterr().out


def test_ctrl_c_exits_130_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("engine.cli.resolve_base_model", interrupted)
    assert main(["model", "path"]) == 130
    assert capsys.readouterr().err == "ragtune: interrupted; run the same command again to finish\n"


def test_the_installed_script_exits_with_the_command_s_code(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "ragtune"
    if not script.exists():
        pytest.skip("no installed `ragtune` script next to this Python (pip install -e .)")
    shown = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert "Usage: ragtune" in shown.stdout
    env = {"PATH": "/usr/bin:/bin", "RAGTUNE_LLM__MODEL": str(tmp_path / "missing")}
    failed = subprocess.run(
        [str(script), "model", "path"], capture_output=True, text=True, timeout=120, env=env
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("ragtune: error: RAGTUNE_LLM__MODEL=")


def test_the_search_modes_are_the_retriever_s() -> None:
    """ingest/cli.py spells ingest.search.Mode out so that --help need not import Qdrant."""
    import ingest.cli
    import ingest.search

    assert get_args(ingest.cli.Mode) == get_args(ingest.search.Mode)


def test_the_command_tree_loads_no_heavy_client() -> None:
    """Qdrant's client, torch and aiohttp load when a command needs them, not for --help."""
    code = "import sys, typer, cli.main; typer.main.get_command(cli.main.build_app()); "
    code += "print(sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for module in ("qdrant_client", "torch", "transformers", "aiohttp", "uvicorn"):
        assert f"'{module}'" not in loaded, module
