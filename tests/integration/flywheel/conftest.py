"""A small flywheel world on the tiny model: the test corpus ingested once, a retrieving route
that captures its answers and serves alias `qa`, a route that does not retrieve, and an eval
suite whose strategy the alias answers."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.registry import Registry
from adapters.validate import ModelSpec
from ragtune.settings import Settings
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus
from tests.fixtures.tiny_model import YES_NO_SCHEMA

QA_SYSTEM = "You answer questions about space from the sources.\n{context}"
ROUTES = {
    "routes": {
        "qa": {
            "kind": "chat",
            "adapter": "qa",
            "retrieval": {"collection": "docs", "top_k": 2, "context_tokens": 200},
            "prompt": {"system": QA_SYSTEM, "user": "{question}"},
            # JSON answers end within a few tokens (constrained decoding), where the tiny
            # model's free text would run to max_tokens and be cut (export leaves those out).
            "generation": {"max_tokens": 40},
            "output": {"type": "json", "schema": YES_NO_SCHEMA},
            "capture": {"sample": 1.0, "redact": [r"\b\d{3}-\d{4}\b"]},
        },
        "qa-lean": {
            "kind": "chat",
            "retrieval": {"collection": "docs", "top_k": 2, "context_tokens": 200},
            "prompt": {"user": "{context}\n\nQ: {question}"},
            "generation": {"max_tokens": 4},
        },
        "chat-plain": {
            "kind": "chat",
            "prompt": {"system": "You are helpful.", "user": "{question}"},
            "generation": {"max_tokens": 4},
        },
    }
}
QUESTIONS = [
    "What are comets made of?",
    "Where do comet tails point?",
    "What is Voyager?",
    "How far is the Moon?",
    "What is a nebula?",
    "Why is Mars red?",
    "What are Saturn's rings?",
    "How hot is the Sun?",
]
SUITE_QUESTIONS = ["Which probe left the solar system?", "What is a comet's nucleus?"]


@dataclass(frozen=True)
class Flywheel:
    """A copy of the ingested data dir, with alias `qa` on the tiny model's adapter alpha."""

    settings: Settings
    model: TinyModel
    root: Path

    def env(self) -> dict[str, str]:
        return {
            "RAGTUNE_DATA_DIR": str(self.settings.data_dir),
            "RAGTUNE_LLM__MODEL": str(self.model.path),
            "RAGTUNE_LLM__DTYPE": "float32",
            "RAGTUNE_API__ROUTES_FILE": str(self.settings.api.routes_file),
        }

    @property
    def registry(self) -> Registry:
        settings = self.settings
        return Registry(
            settings.adapters_root(),
            ModelSpec.from_model_dir(self.model.path),
            max_rank=settings.llm.max_lora_rank,
            max_bytes=settings.adapters.max_adapter_bytes,
        )

    def alias_target(self, alias: str = "qa") -> str | None:
        found = self.registry.aliases().get(alias)
        return None if found is None else found.target

    def write_suite(self, *, passing: bool = True, name: str = "suite") -> Path:
        """A suite on route `qa`: its gate holds on any answer, or on none (`passing`)."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        rows = [{"id": f"s{i}", "vars": {"q": q}} for i, q in enumerate(SUITE_QUESTIONS)]
        (folder / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        kind = "not-contains" if passing else "contains"
        suite: dict[str, Any] = {
            "description": "qa suite",
            "cases": "cases.jsonl",
            "prompt": "{q}",
            "strategies": [{"name": "tuned", "route": "qa"}],
            "assert": [{"type": kind, "value": "zzzqqq-never"}],
            "gates": [{"strategy": "tuned", "metric": "pass_rate", "min": 1.0}],
        }
        path = folder / "suite.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        return path


@pytest.fixture(scope="session")
def flywheel_ingested(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flywheel-world")
    routes = root / "routes.yaml"
    routes.write_text(yaml.safe_dump(ROUTES))
    settings = api_settings(root, tiny_model.path, api={"routes_file": routes})
    ingest_corpus(settings)
    return root


@pytest.fixture
def flywheel(flywheel_ingested: Path, tiny_model: TinyModel, tmp_path: Path) -> Flywheel:
    root = tmp_path / "world"
    shutil.copytree(flywheel_ingested, root)
    settings = api_settings(root, tiny_model.path, api={"routes_file": root / "routes.yaml"})
    world = Flywheel(settings, tiny_model, root)
    registry = world.registry
    record = registry.register(tiny_model.adapters["alpha"], name="qa")
    registry.set_alias("qa", record.ref)
    return world


@pytest.fixture
def env(flywheel: Flywheel, monkeypatch: pytest.MonkeyPatch) -> Flywheel:
    """The `ragtune` command's environment pointed at the world."""
    for name, value in flywheel.env().items():
        monkeypatch.setenv(name, value)
    return flywheel
