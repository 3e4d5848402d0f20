"""Eval-gated alias flips: the suite runs with the candidate version answering in the alias's
place, and the alias moves only when every gate holds; the version's record keeps the summary
and the audit log the verdict. Through the admin API (scripted engine: exact answers) and
through `ragtune adapters alias --require-suite` (the tiny model)."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.audit import AuditLog
from adapters.registry import Registry
from cli.main import main
from engine.backend import Backend
from engine.types import GenerationRequest
from evaluation.promotion import service_gate
from ragtune.errors import RagtuneError
from ragtune.settings import Settings
from service.app import create_app
from tests.fixtures.api import admin_headers
from tests.fixtures.scripted_backend import ScriptedBackend
from tests.integration.evaluation.conftest import QUESTIONS, SuiteWriter, World

SUITE_NAME = "test suite"


def _version_answering(request: GenerationRequest) -> str:
    """The scripted engine answers with the version it was asked to serve."""
    return request.adapter or "base"


@dataclass
class Flip:
    world: World
    current: str  # the version alias `tuned` points at
    candidate: str  # another version of the same adapter, not aliased

    @property
    def registry(self) -> Registry:
        return _registry(self.world.settings)

    def target(self) -> str:
        return self.registry.aliases()["tuned"].target

    def evals(self) -> dict[str, Any]:
        return self.registry.get(self.candidate).evals

    def audit(self) -> dict[str, Any]:
        return AuditLog(self.world.settings.adapters_root() / "audit.jsonl").tail(1)[0]


def _registry(settings: Settings) -> Registry:
    return Registry(
        settings.adapters_root(),
        None,
        max_rank=settings.llm.max_lora_rank,
        max_bytes=settings.adapters.max_adapter_bytes,
    )


@pytest.fixture
def flip(world: World) -> Flip:
    registry = _registry(world.settings)
    current = registry.aliases()["tuned"].target
    candidate = registry.register(world.model.adapters["beta"], name="tuned")
    assert candidate.ref != current
    return Flip(world, current, candidate.ref)


def _suite(write_suite: SuiteWriter, want: str, **keys: Any) -> Path:
    """Cases the `tuned` strategy passes only when answered by version `want`."""
    cases = [{"id": f"q{i}", "vars": {"q": q, "want": want}} for i, q in enumerate(QUESTIONS)]
    values: dict[str, Any] = {
        "strategies": [
            {"name": "plain", "route": "chat-plain"},
            {"name": "tuned", "route": "chat-tuned"},
        ],
        "assert": [{"type": "equals", "value": "{want}"}],
        "gates": [{"strategy": "tuned", "metric": "pass_rate", "min": 1.0}],
    }
    return write_suite(cases, **(values | keys))


@pytest.fixture
def admin(flip: Flip) -> Iterator[tuple[TestClient, ScriptedBackend]]:
    """The API on the scripted engine, with evaluation's gate as `ragtune serve` wires it."""
    backend = ScriptedBackend(_version_answering)

    def backends(settings: Settings) -> Sequence[Backend]:
        return [backend]

    app = create_app(flip.world.settings, backends, suite_gate=service_gate)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, backend


def _put(client: TestClient, target: str, suite: Path | str) -> Any:
    return client.put(
        "/admin/aliases/tuned",
        json={"target": target, "require_suite": str(suite)},
        headers=admin_headers(),
    )


def test_admin_flip_happens_when_the_candidate_passes(
    flip: Flip, admin: tuple[TestClient, ScriptedBackend], write_suite: SuiteWriter
) -> None:
    client, _ = admin
    response = _put(client, flip.candidate, _suite(write_suite, want=flip.candidate))
    assert response.status_code == 200, response.text
    assert response.json()["target"] == flip.candidate
    assert flip.target() == flip.candidate
    summary = flip.evals()[f"suite:{SUITE_NAME}"]
    assert summary["gates"][0]["passed"] is True
    # Measured before the flip: the `tuned` strategy was answered by the candidate.
    assert summary["candidate"]["answered_by"] == {"tuned": [flip.candidate]}
    entry = flip.audit()
    assert (entry["action"], entry["result"]) == ("alias", "ok")
    assert "require_suite" in entry["target"]
    assert "every gate holds" in entry["detail"]


def test_a_second_measurement_runs_only_the_candidates_cases(
    flip: Flip, admin: tuple[TestClient, ScriptedBackend], write_suite: SuiteWriter
) -> None:
    client, backend = admin
    suite = _suite(write_suite, want=flip.candidate)
    assert _put(client, flip.candidate, suite).status_code == 200
    first = [r.adapter for r in backend.requests]
    assert first.count(None) == len(QUESTIONS)  # the `plain` baseline ran
    # Back to the old version, through the same suite: the version answering `tuned` changed,
    # so its cases run again; the baseline's answers come from the cache.
    backend.requests.clear()
    response = _put(client, flip.current, _suite(write_suite, want=flip.current))
    assert response.status_code == 200, response.text
    assert [r.adapter for r in backend.requests] == [flip.current] * len(QUESTIONS)


def test_admin_flip_refused_naming_the_failing_gate(
    flip: Flip, admin: tuple[TestClient, ScriptedBackend], write_suite: SuiteWriter
) -> None:
    client, backend = admin
    # `want` is the version the alias serves now: the candidate answers otherwise, and fails.
    response = _put(client, flip.candidate, _suite(write_suite, want=flip.current))
    assert response.status_code == 409, response.text
    message = response.json()["error"]["message"]
    assert "gate tuned.pass_rate: 0 is below its bound 1" in message
    assert flip.target() == flip.current
    summary = flip.evals()[f"suite:{SUITE_NAME}"]
    assert summary["gates"][0]["passed"] is False
    entry = flip.audit()
    assert (entry["action"], entry["result"]) == ("alias", "refused")
    assert "gate tuned.pass_rate" in entry["detail"]
    # The candidate was loaded for the run only: it is unloaded once nothing uses it.
    deadline = time.monotonic() + 30
    while flip.candidate in backend.adapters and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flip.candidate not in backend.adapters


def test_admin_refuses_a_missing_suite_and_a_suite_that_cannot_judge_the_alias(
    flip: Flip, admin: tuple[TestClient, ScriptedBackend], write_suite: SuiteWriter
) -> None:
    client, _ = admin
    missing = _put(client, flip.candidate, "/nowhere/suite.yaml")
    assert missing.status_code == 404, missing.text
    assert "/nowhere/suite.yaml" in missing.json()["error"]["message"]
    unjudged = _put(
        client,
        flip.candidate,
        _suite(write_suite, want=flip.candidate, strategies=[{"name": "p", "route": "chat-plain"}],
               gates=[{"strategy": "p", "metric": "pass_rate", "min": 0.0}]),
    )  # fmt: skip
    assert unjudged.status_code == 422, unjudged.text
    assert "no strategy is answered by alias 'tuned'" in unjudged.json()["error"]["message"]
    assert flip.target() == flip.current


def test_candidates_are_in_no_http_schema(admin: tuple[TestClient, ScriptedBackend]) -> None:
    client, _ = admin
    schema = client.get("/openapi.json").json()
    assert "candidates" not in json.dumps(schema)
    assert "require_suite" in schema["components"]["schemas"]["AliasRequest"]["properties"]


def test_a_server_without_a_gate_runner_refuses_require_suite(
    flip: Flip, write_suite: SuiteWriter
) -> None:
    backend = ScriptedBackend(_version_answering)
    app = create_app(flip.world.settings, lambda settings: [backend])
    with TestClient(app, raise_server_exceptions=False) as client:
        response = _put(client, flip.candidate, _suite(write_suite, want=flip.candidate))
    assert response.status_code == 422, response.text
    assert "started without eval gating" in response.json()["error"]["message"]
    assert flip.target() == flip.current
    assert flip.audit()["result"] == "refused"


@pytest.fixture
def env(flip: Flip, monkeypatch: pytest.MonkeyPatch) -> Flip:
    for name, value in flip.world.env().items():
        monkeypatch.setenv(name, value)
    return flip


def _marker_suite(write_suite: SuiteWriter, kind: str) -> Path:
    """A gate on the tiny model the candidate passes (`not-contains`) or fails (`contains`)."""
    return write_suite(
        strategies=[{"name": "tuned", "route": "chat-tuned"}],
        **{"assert": [{"type": kind, "value": "zzzqqq-never", "metric": "marker"}]},
        gates=[{"strategy": "tuned", "metric": "marker", "min": 1.0}],
    )


def test_cli_flip_happens_when_the_gates_hold(
    env: Flip, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = _marker_suite(write_suite, "not-contains")
    assert main(["adapters", "alias", "tuned", env.candidate, "--require-suite", str(suite)]) == 0
    assert f"tuned -> {env.candidate}" in capsys.readouterr().out
    assert env.target() == env.candidate
    summary = env.evals()[f"suite:{SUITE_NAME}"]
    assert summary["candidate"]["answered_by"] == {"tuned": [env.candidate]}
    entry = env.audit()
    assert (entry["action"], entry["result"]) == ("alias", "ok")
    assert "every gate holds" in entry["detail"]


def test_cli_flip_refused_exit_1_naming_the_gate(
    env: Flip, write_suite: SuiteWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = _marker_suite(write_suite, "contains")
    assert main(["adapters", "alias", "tuned", env.candidate, "--require-suite", str(suite)]) == 1
    assert "gate tuned.marker" in capsys.readouterr().err
    assert env.target() == env.current
    assert env.evals()[f"suite:{SUITE_NAME}"]["gates"][0]["passed"] is False
    entry = env.audit()
    assert (entry["action"], entry["result"]) == ("alias", "refused")
    assert "gate tuned.marker" in entry["detail"]


def test_ragtune_serve_gives_the_app_evaluations_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.app

    given: dict[str, Any] = {}

    def create_app(settings: Settings, **options: Any) -> Any:
        given.update(options)
        raise RagtuneError("stop before serving")

    monkeypatch.setattr(service.app, "create_app", create_app)
    assert main(["serve"]) == 1
    gate = given["suite_gate"]
    assert gate is not None
    assert inspect.iscoroutinefunction(gate)
