"""What a client may learn before it asks: a dry run of POST /v1/chat (refused exactly as the
answer would be, and generating nothing), each source's packed text on request, and ragtune's
extension of GET /v1/models (route fingerprints, the base model)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from ragtune.settings import Settings
from service.routes.loader import load_routes
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app
from tests.fixtures.scripted_backend import ScriptedBackend

ROUTES = {
    "routes": {
        "chat": {
            "kind": "chat",
            "retrieval": {"collection": "docs", "top_k": 3, "context_tokens": 400},
            "prompt": {"system": "Sources:\n{context}", "user": "{question}"},
            "generation": {"max_tokens": 8},
            "overrides": {"adapters": ["base"], "max_top_k": 5},
        },
        "chat-plain": {
            "kind": "chat",
            "prompt": {"user": "{question}"},
            "overrides": {"generation": ["max_tokens"]},
        },
        "summarize": {"kind": "summarize", "prompt": {"user": "Summarize: {text}"}},
    }
}


@pytest.fixture(scope="module")
def settings(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("checks")
    routes = root / "routes.yaml"
    routes.write_text(yaml.safe_dump(ROUTES))
    settings = api_settings(root, tiny_model.path, api={"routes_file": routes})
    ingest_corpus(settings)
    return settings


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend("Apples grow in orchards [1].")


@pytest.fixture(scope="module")
def client(settings: Settings, backend: ScriptedBackend) -> Iterator[TestClient]:
    with running_app(settings, lambda _: [backend]) as client:
        yield client


def ask(route: str = "chat", question: str = "How do apples grow?", **extra: Any) -> dict[str, Any]:
    return {"route": route, "messages": [{"role": "user", "content": question}], **extra}


def test_a_dry_run_says_what_would_serve_and_runs_nothing(
    client: TestClient, backend: ScriptedBackend
) -> None:
    before = len(backend.requests)
    asked = ask(adapter="base", top_k=4, temperature=0.5, dry_run=True)
    response = client.post("/v1/chat", json=asked)
    assert response.status_code == 200, response.text
    body = response.json()
    sampling = body.pop("sampling")
    assert body == {
        "dry_run": True,
        "route": "chat",
        "adapter_alias": None,
        "adapter": None,
        "retrieves": True,
    }
    assert (sampling["temperature"], sampling["max_tokens"]) == (0.5, 8)
    plain = client.post("/v1/chat", json=ask("chat-plain", dry_run=True)).json()
    assert (plain["route"], plain["retrieves"]) == ("chat-plain", False)
    assert len(backend.requests) == before


BAD = {
    "adapter not allowed": ask(adapter="nope"),
    "top_k above the route's bound": ask(top_k=9),
    "filters not allowed": ask(filters={"file_type": "md"}),
    "route does not retrieve": ask("chat-plain", top_k=2),
    "generation field fixed": ask("chat-plain", temperature=0.3),
    "max_tokens above the server's": ask("chat-plain", max_tokens=100_000),
    "unknown route": ask("nowhere"),
    "summarize route": ask("summarize"),
    "last message not the user's": {
        "route": "chat",
        "messages": [{"role": "assistant", "content": "hi"}],
    },
}


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_a_dry_run_is_refused_as_the_answer_is(
    client: TestClient, backend: ScriptedBackend, body: dict[str, Any]
) -> None:
    before = len(backend.requests)
    real = client.post("/v1/chat", json=body)
    dry = client.post("/v1/chat", json=body | {"dry_run": True})
    assert real.status_code in (404, 422), real.text
    assert (dry.status_code, dry.json()) == (real.status_code, real.json())
    assert len(backend.requests) == before


def test_sources_carry_their_text_only_when_asked(
    client: TestClient, backend: ScriptedBackend
) -> None:
    plain = client.post("/v1/chat", json=ask()).json()
    assert plain["sources"]
    assert all("text" not in s for s in plain["sources"])
    full = client.post("/v1/chat", json=ask(include_source_text=True)).json()
    texts = [s["text"] for s in full["sources"]]
    assert [t.split("\n", 1)[0].split()[0] for t in texts] == [
        f"[{s['number']}]" for s in full["sources"]
    ]
    # Exactly the sources as the model saw them in the prompt.
    prompt = backend.requests[-1].messages[0].content
    assert prompt == "Sources:\n" + "\n\n".join(texts)
    assert any(
        len(" ".join(t.split())) > len(s["snippet"])
        for t, s in zip(texts, full["sources"], strict=True)
    )


def test_streamed_sources_carry_their_text_when_asked(client: TestClient) -> None:
    events = [
        json.loads(block.removeprefix("data: "))
        for block in client.post("/v1/chat", json=ask(stream=True, include_source_text=True))
        .text.strip()
        .split("\n\n")[:-1]
    ]
    assert events[0]["type"] == "sources"
    assert all(s["text"].startswith(f"[{s['number']}]") for s in events[0]["sources"])


def test_models_carry_route_fingerprints_and_the_base_model(
    client: TestClient, settings: Settings, tiny_model: TinyModel
) -> None:
    body = client.get("/v1/models").json()
    assert settings.api.routes_file is not None
    specs = load_routes(settings.api.routes_file)
    models = {m["id"]: m["ragtune"] for m in body["data"]}
    assert set(models) == {"chat", "chat-plain"}
    for name, info in models.items():
        dumped = json.dumps(specs[name].model_dump(mode="json", by_alias=True), sort_keys=True)
        assert info["fingerprint"] == hashlib.sha256(dumped.encode()).hexdigest()
    assert models["chat"]["retrieves"] is True
    assert models["chat"]["overrides"]["adapters"] == ["base"]
    assert models["chat"]["overrides"]["max_top_k"] == 5
    assert models["chat-plain"]["overrides"]["generation"] == ["max_tokens"]
    config = Path(tiny_model.path) / "config.json"
    assert body["ragtune"]["base_model"] == {
        "name": Path(tiny_model.path).resolve().name,
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
        "backend": "embedded",
        "dtype": "float32",
    }


def test_a_changed_route_changes_its_fingerprint_only(
    tiny_model: TinyModel, backend: ScriptedBackend, tmp_path: Path
) -> None:
    fingerprints = []
    for n, user in enumerate(["{question}", "Briefly: {question}"]):
        routes = json.loads(json.dumps(ROUTES))
        routes["routes"]["chat-plain"]["prompt"]["user"] = user
        path = tmp_path / f"routes{n}.yaml"
        path.write_text(yaml.safe_dump(routes))
        # Its own data dir: the module's app holds the other's embedded Qdrant.
        served = api_settings(tmp_path / str(n), tiny_model.path, api={"routes_file": path})
        with running_app(served, lambda _: [backend]) as client:
            data = client.get("/v1/models").json()["data"]
        fingerprints.append({m["id"]: m["ragtune"]["fingerprint"] for m in data})
    before, after = fingerprints
    assert before["chat"] == after["chat"]
    assert before["chat-plain"] != after["chat-plain"]
