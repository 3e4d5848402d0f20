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
# adapter -> the shipped route it serves, the suite that measured it, and the suite's strategy.
SHIPPED = {
    "review-json": ("review", "reviews-json", "adapter"),
    "grounded-qa": ("qa", "squad-qa", "rag+adapter"),
}


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
def test_a_shipped_adapter_was_measured_by_its_suite_against_the_suites_gates(name: str) -> None:
    route, suite, strategy = SHIPPED[name]
    summary = json.loads((TRAINED / name / "eval-summary.json").read_text(encoding="utf-8"))
    spec = yaml.safe_load((TRAINED.parent / "evals" / suite / "suite.yaml").read_text())
    assert summary["suite"] == spec["description"]
    # Every gate of the shipped suite was checked (trained/README.md gives the verdicts).
    gates = [(g["strategy"], g["metric"]) for g in summary["gates"]]
    assert gates == [(g["strategy"], g["metric"]) for g in spec["gates"]]
    # The strategy that measured the adapter is on the route that serves it.
    (measured,) = [s for s in spec["strategies"] if s["name"] == strategy]
    assert measured["route"] == route
    assert summary["strategies"][strategy]["cases"] > 0
    routes = yaml.safe_load(DEFAULT_ROUTES.read_text(encoding="utf-8"))["routes"]
    assert name in {routes[route].get("adapter"), *routes[route]["overrides"]["adapters"]}
