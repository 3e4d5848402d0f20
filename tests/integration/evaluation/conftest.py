"""A small evaluation world: the test corpus ingested once, routes with an adapter alias, and
suites written next to their cases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
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

ROUTES = {
    "routes": {
        "chat": {
            "kind": "chat",
            "retrieval": {"collection": "docs", "top_k": 3, "context_tokens": 400},
            "prompt": {"system": "Answer from the sources.\n{context}", "user": "{question}"},
            "generation": {"max_tokens": 6},
            "overrides": {"adapters": ["base"], "max_top_k": 5},
        },
        "chat-plain": {
            "kind": "chat",
            "prompt": {"system": "You are helpful.", "user": "{question}"},
            "generation": {"max_tokens": 6},
        },
        "chat-tuned": {
            "kind": "chat",
            "adapter": "tuned",
            "prompt": {"user": "{question}"},
            "generation": {"max_tokens": 6},
        },
        "summarize": {"kind": "summarize", "prompt": {"user": "Summarize: {text}"}},
    }
}
QUESTIONS = ["What are comets made of?", "Where do tails point?", "What is Voyager?"]


@dataclass(frozen=True)
class World:
    """A copy of the ingested data dir (each test gets its own cache and registry)."""

    settings: Settings
    model: TinyModel

    def env(self) -> dict[str, str]:
        """The RAGTUNE_* variables that make `ragtune` use these settings."""
        return {
            "RAGTUNE_DATA_DIR": str(self.settings.data_dir),
            "RAGTUNE_LLM__MODEL": str(self.model.path),
            "RAGTUNE_LLM__DTYPE": "float32",
            "RAGTUNE_API__ROUTES_FILE": str(self.settings.api.routes_file),
        }

    def point_alias(self, adapter: str, alias: str = "tuned") -> str:
        """Register one of the tiny model's adapters under `alias`; its name@version."""
        settings = self.settings
        registry = Registry(
            settings.adapters_root(),
            ModelSpec.from_model_dir(self.model.path),
            max_rank=settings.llm.max_lora_rank,
            max_bytes=settings.adapters.max_adapter_bytes,
        )
        record = registry.register(self.model.adapters[adapter], name="tuned")
        registry.set_alias(alias, record.ref)
        return record.ref


@pytest.fixture(scope="session")
def ingested(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval-world")
    routes = root / "routes.yaml"
    routes.write_text(yaml.safe_dump(ROUTES))
    settings = api_settings(root, tiny_model.path, api={"routes_file": routes})
    ingest_corpus(settings)
    return root


@pytest.fixture
def world(ingested: Path, tiny_model: TinyModel, tmp_path: Path) -> World:
    root = tmp_path / "world"
    shutil.copytree(ingested, root)
    settings = api_settings(root, tiny_model.path, api={"routes_file": root / "routes.yaml"})
    world = World(settings, tiny_model)
    world.point_alias("alpha")
    return world


SuiteWriter = Callable[..., Path]


@pytest.fixture
def write_suite(tmp_path: Path) -> SuiteWriter:
    """Writes suite.yaml (the given keys over a default) and cases.jsonl; returns the suite."""

    def write(cases: list[dict[str, Any]] | None = None, **keys: Any) -> Path:
        folder = tmp_path / "suite"
        folder.mkdir(exist_ok=True)
        rows = cases or [{"id": f"q{i}", "vars": {"q": q}} for i, q in enumerate(QUESTIONS)]
        (folder / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        suite: dict[str, Any] = {
            "description": "test suite",
            "cases": "cases.jsonl",
            "prompt": "{q}",
            "strategies": [
                {"name": "plain", "route": "chat-plain"},
                {"name": "rag", "route": "chat", "top_k": 2},
                {"name": "tuned", "route": "chat-tuned"},
            ],
            "assert": [{"type": "not-contains", "value": "zzzqqq-never"}],
            "gates": [{"strategy": "plain", "metric": "pass_rate", "min": 1.0}],
        }
        suite.update(keys)
        path = folder / "suite.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        return path

    return write
