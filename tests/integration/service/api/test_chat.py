"""POST /v1/chat through real HTTP: the tiny model, embedded Qdrant, the shipped routes."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.types import ChatMessage
from service.chat.service import ChatCall


def ask(question: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "max_tokens": 6, **extra}


MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def raw_answer(client: TestClient, question: str) -> tuple[str, int]:
    """The model's answer to `question` on the chat route before the citation check, and how
    many sources it was given (the app's own pieces, on its event loop)."""
    state = client.app_state["services"]

    async def generate() -> tuple[str, int]:
        call = ChatCall(
            route="chat",
            messages=[ChatMessage(role="user", content=question)],
            sampling={"max_tokens": 6},
        )
        prepared = await state.chat.prepare(call)
        completion = await state.backend.generate(prepared.request)
        return completion.text, len(prepared.sources)

    result: tuple[str, int] = client.portal.call(generate)
    return result


def sse(text: str) -> list[Any]:
    """The data of each server-sent event, [DONE] as a string."""
    events = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_answer_has_numbered_sources_from_the_corpus(client: TestClient) -> None:
    response = client.post("/v1/chat", json=ask("How do orchard keepers prune apple trees?"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["route"] == "chat"
    assert body["adapter"] is None
    sources = body["sources"]
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))
    assert sources[0]["doc_id"].endswith("fruit.txt")
    assert "Apples grow on trees" in sources[0]["snippet"]
    assert set(sources[0]) == {
        "number",
        "doc_id",
        "source",
        "title",
        "chunk_index",
        "score",
        "snippet",
    }
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 6
    assert body["finish_reason"] == "length"
    # The citation check against the model's own answer, before the check: markers that point
    # at no source are counted and taken out, the rest is the model's text.
    raw, given = raw_answer(client, "How do orchard keepers prune apple trees?")
    assert given == len(sources)
    numbers = [int(n) for group in MARKER.findall(raw) for n in group.split(",")]
    invalid = [n for n in numbers if not 1 <= n <= given]
    assert body["citations"]["removed"] == len(invalid)
    assert body["citations"]["cited"] == sorted({n for n in numbers if 1 <= n <= given})
    if not invalid:
        assert body["answer"] == raw


def test_stream_sends_sources_then_the_same_answer_then_done(client: TestClient) -> None:
    question = ask("What powers the Voyager probes?")
    whole = client.post("/v1/chat", json=question).json()
    response = client.post("/v1/chat", json={**question, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    assert events[0]["type"] == "sources"
    assert [s["doc_id"] for s in events[0]["sources"]] == [s["doc_id"] for s in whole["sources"]]
    deltas = [e for e in events if isinstance(e, dict) and e["type"] == "delta"]
    assert "".join(e["text"] for e in deltas) == whole["answer"]
    assert events[-2]["type"] == "done"
    assert events[-2]["usage"] == whole["usage"]
    assert events[-1] == "[DONE]"


def test_multi_turn_history_reaches_the_prompt(client: TestClient) -> None:
    one = client.post("/v1/chat", json=ask("Tell me about tides.")).json()
    two = client.post(
        "/v1/chat",
        json={
            "messages": [
                {"role": "user", "content": "Tell me about tides."},
                {"role": "assistant", "content": "High tide comes twice a day."},
                {"role": "user", "content": "Tell me about tides."},
            ],
            "max_tokens": 6,
        },
    ).json()
    assert two["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"]


def test_allowed_overrides_filter_and_top_k(client: TestClient) -> None:
    body = client.post(
        "/v1/chat", json=ask("kitchen bread soup", filters={"file_type": "md"}, top_k=2)
    ).json()
    assert len(body["sources"]) == 2
    assert all(s["source"].endswith(".md") for s in body["sources"])
    sparse = client.post("/v1/chat", json=ask("Voyager", mode="sparse", top_k=1)).json()
    assert sparse["sources"][0]["doc_id"].endswith("voyager.txt")


def test_base_model_may_be_chosen_on_a_route_that_allows_it(client: TestClient) -> None:
    response = client.post("/v1/chat", json=ask("apples", adapter="base"))
    assert response.status_code == 200
    assert response.json()["adapter"] is None


@pytest.mark.parametrize(
    ("body", "param_or_text"),
    [
        (ask("x", route="chat-plain", filters={"file_type": "md"}), "does not retrieve"),
        (ask("x", top_k=21), "top_k: route 'chat' allows at most 20"),
        (ask("x", adapter="someone-elses"), "adapter: route 'chat' allows 'base'"),
        (
            ask("x", route="chat-plain", adapter="tone"),
            "route 'chat-plain' allows 'base', not 'tone'",
        ),
        (ask("x", max_tokens=5000), "max_tokens: 5000 is above this server's limit of 1024"),
        (ask("x", filters={"title": "a"}, route="summarize"), "is a summarize route"),
    ],
)
def test_refused_overrides_name_the_field(
    client: TestClient, body: dict[str, Any], param_or_text: str
) -> None:
    response = client.post("/v1/chat", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param_or_text in error["message"]


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "user"}]}, 422, "messages.0.content"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x"}], "colour": 1}, 422, "colour"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 422, "max_tokens"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            422,
            "last message must be the user's",
        ),
        ({"messages": [{"role": "user", "content": "  "}]}, 422, "last user message is empty"),
        (ask("x", route="nope"), 404, "route 'nope' does not exist"),
    ],
)
def test_bad_requests_get_a_clear_error(
    client: TestClient, body: dict[str, Any], status: int, expected: str
) -> None:
    response = client.post("/v1/chat", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert expected in (error["message"] + " " + str(error["param"]))


def test_too_many_messages(client: TestClient) -> None:
    turns = [{"role": "user", "content": "hi"}] * 65
    response = client.post("/v1/chat", json={"messages": turns})
    assert response.status_code == 422
    assert "65 messages, the limit is 64" in response.json()["error"]["message"]


def test_body_not_json_or_too_large(client: TestClient) -> None:
    response = client.post(
        "/v1/chat", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["error"]["message"]
    big = ask("x" * 1_100_000)
    response = client.post("/v1/chat", json=big)
    assert response.status_code == 413
    assert "larger than this server's limit of 1000000 bytes" in response.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_refused_while_reading(client: TestClient) -> None:
    def body() -> Any:
        for _ in range(20):
            yield b" " * 100_000

    response = client.post("/v1/chat", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_path_and_method(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    response = client.get("/v1/chat")
    assert response.status_code == 405
    assert response.json()["error"]["message"] == "Method Not Allowed"


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"qdrant": "ok", "backend": "ok"}
    client.post("/v1/chat", json=ask("apples"))
    client.post("/v1/chat", json=ask("x", top_k=99))
    text = client.get("/metrics").text
    for stage in ("embed", "search", "generate"):
        assert f'ragtune_stage_seconds_count{{route="chat",stage="{stage}"}}' in text
    assert 'ragtune_tokens_total{direction="out",route="chat"}' in text
    assert 'ragtune_adapter_requests_total{adapter="base",route="chat"}' in text
    assert 'ragtune_errors_total{type="invalid_request_error"}' in text
    assert 'ragtune_requests_total{endpoint="/v1/chat",route="chat",status="422"}' in text
    assert 'ragtune_request_seconds_count{endpoint="/v1/chat",route="chat"}' in text


def test_concurrent_questions_get_the_same_sources_as_one_at_a_time(client: TestClient) -> None:
    questions = [
        "How do orchard keepers prune apple trees?",
        "What powers the Voyager probes?",
        "apples",
        "bread and flour",
        "space probes",
        "trees",
    ]
    alone = [client.post("/v1/chat", json=ask(q)).json()["sources"] for q in questions]
    before = _embedded_questions(client)
    # The queries embedded while one model call runs share the next: vectors may differ in
    # the last float bits, the ranking must not.
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(lambda q: client.post("/v1/chat", json=ask(q)), questions))
    assert [r.status_code for r in together] == [200] * len(questions)
    for one, other in zip(alone, together, strict=True):
        assert [s["doc_id"] for s in other.json()["sources"]] == [s["doc_id"] for s in one]
    assert _embedded_questions(client) - before == len(questions)


def _embedded_questions(client: TestClient) -> float:
    """The sum of the embed batch size histogram: questions embedded so far."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ragtune_embed_batch_size_sum"):
            return float(line.split()[-1])
    raise AssertionError("no ragtune_embed_batch_size_sum in /metrics")


def test_answers_carry_their_stage_times_in_server_timing(client: TestClient) -> None:
    response = client.post("/v1/chat", json=ask("How do orchard keepers prune apple trees?"))
    timing = response.headers["server-timing"]
    stages = dict(part.split(";dur=") for part in timing.split(", "))
    assert list(stages) == ["embed", "search", "generate"]
    assert all(float(ms) > 0 for ms in stages.values())
    plain = client.post("/v1/chat", json=ask("hello", route="chat-plain"))
    assert plain.headers["server-timing"].startswith("generate;dur=")
    assert "server-timing" not in client.get("/healthz").headers
