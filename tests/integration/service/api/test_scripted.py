"""Behaviour a tiny random model cannot be made to show, on a scripted backend at the HTTP
boundary: citation markers, backend and Qdrant failures, timeouts, errors mid-stream."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragtune.errors import UpstreamUnavailable
from ragtune.settings import Settings
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app
from tests.fixtures.scripted_backend import ScriptedBackend

ANSWER = "Apples grow in orchards [1]. Pruning helps [1, 9]. Tides [7] are unrelated [2]."


@pytest.fixture(scope="module")
def settings(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = api_settings(tmp_path_factory.mktemp("scripted"), tiny_model.path)
    ingest_corpus(settings)
    return settings


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend(ANSWER, piece=2)


@pytest.fixture(scope="module")
def client(settings: Settings, backend: ScriptedBackend) -> Iterator[TestClient]:
    with running_app(settings, lambda _: [backend]) as client:
        yield client


def ask(question: str = "How do apples grow?", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "top_k": 2, **extra}


def test_made_up_citation_markers_are_removed_and_counted(client: TestClient) -> None:
    body = client.post("/v1/chat", json=ask()).json()
    assert len(body["sources"]) == 2
    assert (
        body["answer"]
        == "Apples grow in orchards [1]. Pruning helps [1]. Tides  are unrelated [2]."
    )
    assert body["citations"] == {"cited": [1, 2], "removed": 2}


def test_streamed_markers_split_across_pieces_are_cleaned_the_same(client: TestClient) -> None:
    whole = client.post("/v1/chat", json=ask()).json()
    events = [
        json.loads(b.removeprefix("data: "))
        for b in client.post("/v1/chat", json=ask(stream=True)).text.strip().split("\n\n")[:-1]
    ]
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == whole["answer"]
    assert events[-1]["citations"] == {"cited": [1, 2], "removed": 2}


def test_the_prompt_holds_the_numbered_sources_and_the_question(
    client: TestClient, backend: ScriptedBackend
) -> None:
    body = client.post("/v1/chat", json=ask("What do orchard keepers do?")).json()
    request = backend.requests[-1]
    system, user = request.messages[0], request.messages[-1]
    assert system.role == "system"
    assert "[1] fruit\nApples grow on trees" in system.content
    assert "[2]" in system.content
    assert "[3]" not in system.content
    assert user.content == "What do orchard keepers do?"
    assert request.adapter is None
    assert body["sources"][0]["title"] == "fruit"


def test_caller_system_message_is_added_to_the_routes(
    client: TestClient, backend: ScriptedBackend
) -> None:
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "apples"},
    ]
    client.post("/v1/chat", json={"messages": messages})
    system = backend.requests[-1].messages[0].content
    assert system.startswith("You are a helpful assistant.")
    assert system.endswith("Answer in French.")


def test_context_budget_limits_the_sources(tmp_path: Path, tiny_model: TinyModel) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n  tight:\n    kind: chat\n    retrieval: {collection: docs, top_k: 5, "
        "context_tokens: 60}\n    prompt: {system: '{context}', user: '{question}'}\n"
    )
    settings = api_settings(tmp_path, tiny_model.path, api={"routes_file": routes})
    ingest_corpus(settings)
    backend = ScriptedBackend("fine")
    with running_app(settings, lambda _: [backend]) as client:
        body = client.post(
            "/v1/chat",
            json={
                "route": "tight",
                "messages": [{"role": "user", "content": "apple orchards prune trees"}],
            },
        ).json()
    assert 1 <= len(body["sources"]) < 5
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    context = backend.requests[-1].messages[0].content
    assert len(tokenizer.encode(context, add_special_tokens=False)) <= 60


@pytest.fixture
def plain_settings(tmp_path: Path, tiny_model: TinyModel) -> Settings:
    """Its own (empty) embedded Qdrant: the module's app holds the other one open."""
    return api_settings(tmp_path, tiny_model.path)


def plain(**extra: Any) -> dict[str, Any]:
    return {"route": "chat-plain", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_the_start_up_heap_is_frozen_while_serving(plain_settings: Settings) -> None:
    """What lives as long as the app (made before it started) is out of the garbage
    collector's full passes while it serves, and back in them once it stops."""
    startup = ["made before the app started"]  # a list: always tracked by the collector
    with running_app(plain_settings, lambda _: [ScriptedBackend("hi")]) as client:
        assert client.post("/v1/chat", json=plain()).status_code == 200
        assert not any(o is startup for o in gc.get_objects())
    assert any(o is startup for o in gc.get_objects())


def test_backend_down_gives_503_with_retry_after(plain_settings: Settings) -> None:
    down = ScriptedBackend(fail=UpstreamUnavailable("vLLM at http://x did not answer"))
    down.healthy = False
    with running_app(plain_settings, lambda _: [down]) as client:
        response = client.post("/v1/chat", json=plain())
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json()["error"]["type"] == "service_unavailable_error"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "5"
        assert ready.json()["checks"]["qdrant"] == "ok"
        assert "the scripted backend is down" in ready.json()["checks"]["backend"]


def test_backend_too_slow_gives_503(plain_settings: Settings) -> None:
    slow = ScriptedBackend("late", delay_s=3)
    fast_timeout = plain_settings.model_copy(
        update={"api": plain_settings.api.model_copy(update={"request_timeout_s": 0.5})}
    )
    with running_app(fast_timeout, lambda _: [slow]) as client:
        response = client.post("/v1/chat", json=plain())
        assert response.status_code == 503
        assert "longer than 0.5 s" in response.json()["error"]["message"]
        stream = client.post("/v1/chat", json=plain(stream=True))
        events = stream.text.strip().split("\n\n")
        assert '"type":"sources"' in events[0]
        error = json.loads(events[-2].removeprefix("data: "))
        assert error["type"] == "error"
        assert error["error"]["status"] == 503
        assert "longer than 0.5 s" in error["error"]["message"]
        assert events[-1] == "data: [DONE]"


def test_error_mid_stream_ends_with_an_error_event(plain_settings: Settings) -> None:
    broken = ScriptedBackend(ANSWER, fail=UpstreamUnavailable("engine died"), fail_after_pieces=3)
    with running_app(plain_settings, lambda _: [broken]) as client:
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": "chat-plain",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
    blocks = response.text.strip().split("\n\n")
    error = json.loads(blocks[-2].removeprefix("data: "))
    assert error["error"]["message"] == "engine died"
    assert error["error"]["status"] == 503
    assert blocks[-1] == "data: [DONE]"


def test_an_unexpected_backend_bug_is_a_500_without_traceback(plain_settings: Settings) -> None:
    buggy = ScriptedBackend(fail=ZeroDivisionError("secret internals"))
    with running_app(plain_settings, lambda _: [buggy]) as client:
        response = client.post("/v1/chat", json=plain())
    assert response.status_code == 500
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert response.json()["error"]["type"] == "internal_error"


def test_qdrant_down_gives_503(tmp_path: Path, tiny_model: TinyModel) -> None:
    settings = api_settings(
        tmp_path, tiny_model.path, qdrant={"url": "http://127.0.0.1:9", "timeout_s": 2}
    )
    with running_app(settings, lambda _: [ScriptedBackend()]) as client:
        response = client.post("/v1/chat", json=ask())
        assert response.status_code == 503, response.text
        assert "Qdrant at http://127.0.0.1:9 did not answer" in response.json()["error"]["message"]
        assert client.get("/readyz").status_code == 503
        # A route without retrieval does not need Qdrant.
        plain = client.post(
            "/v1/chat",
            json={"route": "chat-plain", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert plain.status_code == 200


def test_missing_collection_is_a_404_that_says_to_ingest(
    tmp_path: Path, tiny_model: TinyModel
) -> None:
    settings = api_settings(tmp_path, tiny_model.path)
    with running_app(settings, lambda _: [ScriptedBackend()]) as client:
        response = client.post("/v1/chat", json=ask())
    assert response.status_code == 404
    assert "ragtune ingest" in response.json()["error"]["message"]


JSON_ROUTES = """
routes:
  verdict:
    kind: chat
    prompt: {user: "{question}"}
    output:
      type: json
      schema:
        type: object
        properties: {answer: {type: string, enum: ["yes", "no"]}}
        required: [answer]
"""


@pytest.mark.parametrize(
    ("reply", "reason", "problem"),
    [
        ('{"answer": "yes"', "not_json", "the answer is not valid JSON"),
        ('{"answer": "maybe"}', "schema", "does not match the route's schema: answer: 'maybe'"),
    ],
)
def test_an_invalid_json_answer_is_reported_and_counted(
    tmp_path: Path, tiny_model: TinyModel, reply: str, reason: str, problem: str
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(JSON_ROUTES)
    settings = api_settings(tmp_path, tiny_model.path, api={"routes_file": routes})
    asked = {"messages": [{"role": "user", "content": "well?"}]}
    with running_app(settings, lambda _: [ScriptedBackend(reply)]) as client:
        body = client.post("/v1/chat", json={"route": "verdict", **asked}).json()
        assert body["answer"] == reply
        assert body["output"] is None
        assert problem in body["output_error"]
        stream = client.post("/v1/chat", json={"route": "verdict", "stream": True, **asked})
        done = json.loads(stream.text.strip().split("\n\n")[-2].removeprefix("data: "))
        assert done["type"] == "done"
        assert problem in done["output_error"]
        openai = client.post("/v1/chat/completions", json={"model": "verdict", **asked}).json()
        assert openai["ragtune"]["output"] is None
        assert problem in openai["ragtune"]["output_error"]
        metrics = client.get("/metrics").text
    counted = f'ragtune_invalid_json_outputs_total{{reason="{reason}",route="verdict"}} 3.0'
    assert counted in metrics


def test_a_valid_json_answer_is_the_output(tmp_path: Path, tiny_model: TinyModel) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(JSON_ROUTES)
    settings = api_settings(tmp_path, tiny_model.path, api={"routes_file": routes})
    asked = {"route": "verdict", "messages": [{"role": "user", "content": "well?"}]}
    with running_app(settings, lambda _: [ScriptedBackend('{"answer": "no"}')]) as client:
        body = client.post("/v1/chat", json=asked).json()
        metrics = client.get("/metrics").text
    assert body["output"] == {"answer": "no"}
    assert body["output_error"] is None
    assert "ragtune_invalid_json_outputs_total{" not in metrics


def test_a_slow_answer_gets_keep_alive_comments(
    plain_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the engine is silent the stream sends `: ping` comments; the events around them
    keep their framing."""
    monkeypatch.setattr("service.sse.PING_INTERVAL_S", 0.05)
    slow = ScriptedBackend("slow answer", delay_s=1.0)
    with running_app(plain_settings, lambda _: [slow]) as client:
        text = client.post("/v1/chat", json=plain(stream=True)).text
    blocks = text.strip().split("\n\n")
    assert ": ping" in blocks
    events = [json.loads(b.removeprefix("data: ")) for b in blocks[:-1] if b != ": ping"]
    assert events[0]["type"] == "sources"
    assert events[-1]["type"] == "done"
    assert "".join(e.get("text", "") for e in events) == "slow answer"
    assert blocks[-1] == "data: [DONE]"


def test_readiness_checks_the_backend_it_is_given(plain_settings: Settings) -> None:
    """Health gets what it checks through service/deps.py, so a test can swap it."""
    from service.deps import get_backend

    down = ScriptedBackend()
    down.healthy = False
    with running_app(plain_settings, lambda _: [ScriptedBackend()]) as client:
        assert client.get("/readyz").status_code == 200
        client.app.dependency_overrides[get_backend] = lambda: down  # type: ignore[attr-defined]
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "the scripted backend is down" in ready.json()["checks"]["backend"]


def test_an_invalid_json_summary_is_reported_and_counted(
    tmp_path: Path, tiny_model: TinyModel
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n  brief:\n    kind: summarize\n    prompt: {user: '{text}'}\n"
        "    output: {type: json, schema: {type: object}}\n"
    )
    settings = api_settings(tmp_path, tiny_model.path, api={"routes_file": routes})
    with running_app(settings, lambda _: [ScriptedBackend("[1, 2")]) as client:
        body = client.post("/v1/summarize", json={"route": "brief", "text": "Some text."}).json()
        metrics = client.get("/metrics").text
    assert body["output"] is None
    assert "the answer is not valid JSON" in body["output_error"]
    assert 'ragtune_invalid_json_outputs_total{reason="not_json",route="brief"} 1.0' in metrics
