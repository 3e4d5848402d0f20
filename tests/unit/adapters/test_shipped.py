"""The adapters shipped in trained/: what `make run` registers must be servable PEFT folders for
the default model, trained by ragtune (their training.json), and must have passed the gates of
the suite that measured them (their eval-summary.json, written by `make adapters-trained`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.lora import check_servable, read_lora_config
from engine.model import DEFAULT_MODEL_NAME
from ragtune.settings import VLLM_LORA_RANKS
from service.routes.loader import DEFAULT_ROUTES

TRAINED = Path(__file__).resolve().parents[3] / "trained"
# adapter -> the shipped route it serves and the suite that measured it.
SHIPPED = {"review-json": ("review", "reviews-json"), "grounded-qa": ("qa", "squad-qa")}


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_adapter_is_servable_and_trained_on_the_default_model(name: str) -> None:
    folder = TRAINED / name
    assert {p.name for p in folder.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "training.json",
        "eval-summary.json",
    }
    info = read_lora_config(folder)
    check_servable(info, name, max(VLLM_LORA_RANKS))
    assert Path(str(info.base_model)).name == DEFAULT_MODEL_NAME
    report = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    assert report["versions"]["trl"]
    assert report["examples"] > 0
    assert report["eval_examples"] > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_adapter_passed_its_suites_gates(name: str) -> None:
    route, suite = SHIPPED[name]
    summary = json.loads((TRAINED / name / "eval-summary.json").read_text(encoding="utf-8"))
    assert summary["gates"], "measured against gates"
    failing = [g for g in summary["gates"] if not g["passed"]]
    assert not failing, failing
    # The summary is of the shipped suite, whose adapter strategy this route serves.
    spec = yaml.safe_load((TRAINED.parent / "evals" / suite / "suite.yaml").read_text())
    assert summary["suite"] == spec["description"]
    routes = yaml.safe_load(DEFAULT_ROUTES.read_text(encoding="utf-8"))["routes"]
    assert routes[route]["adapter"] == name
