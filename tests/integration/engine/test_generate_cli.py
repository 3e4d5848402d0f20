"""`ragtune generate` on the embedded engine with the tiny model."""

from __future__ import annotations

import pytest

from cli.main import main
from tests.conftest import TinyModel


@pytest.fixture(autouse=True)
def _tiny(tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))


def _answer(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    assert main(["generate", "hello world", "--max-tokens", "10", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_base_and_adapter_answers(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel
) -> None:
    base, err = _answer(capsys)
    assert "[embedded, base model: 12 prompt + 10 completion tokens" in err
    adapted, err = _answer(capsys, "--adapter", str(tiny_model.adapters["alpha"]))
    assert "[embedded, cli-alpha:" in err
    assert adapted != base
    streamed, _ = _answer(capsys, "--stream")
    assert streamed == base


def test_bad_arguments_exit_2_with_the_option_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "x", "--max-tokens", "0"]) == 2
    assert "--max-tokens: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_an_adapter_above_the_rank_limit_is_refused(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel
) -> None:
    assert main(["generate", "x", "--adapter", str(tiny_model.adapters["too-big"])]) == 2
    assert "rank 32, above max_lora_rank 16" in capsys.readouterr().err
