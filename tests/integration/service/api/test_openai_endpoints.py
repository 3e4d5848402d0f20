"""/v1/chat/completions and /v1/models in OpenAI's shapes (the official client is exercised
against a running server in test_openai_client.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.routes.loader import DEFAULT_ROUTES, load_routes


def completion(**extra: Any) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": "How do apples grow?"}],
        "max_tokens": 5,
        **extra,
    }


def test_models_are_the_chat_routes(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    shipped = load_routes(DEFAULT_ROUTES)
    # Every chat route of the shipped routes file, in its order; summarize routes are not models.
    assert ids == [name for name, spec in shipped.items() if spec.kind == "chat"]
    assert "summarize" not in ids
    assert all(m["object"] == "model" and m["owned_by"] == "ragtune" for m in body["data"])


def test_completion_shape_with_ragtune_extra(client: TestClient) -> None:
    body = client.post("/v1/chat/completions", json=completion()).json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "chat"
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    extra = body["ragtune"]
    assert extra["route"] == "chat"
    assert extra["sources"][0]["doc_id"].endswith("fruit.txt")
    assert set(extra["citations"]) == {"cited", "removed"}


def test_same_answer_as_ragtunes_own_endpoint(client: TestClient) -> None:
    ours = client.post(
        "/v1/chat",
        json={"messages": [{"role": "user", "content": "How do apples grow?"}], "max_tokens": 5},
    ).json()
    theirs = client.post("/v1/chat/completions", json=completion()).json()
    assert theirs["choices"][0]["message"]["content"] == ours["answer"]


def test_stream_chunks_in_openai_format(client: TestClient) -> None:
    whole = client.post("/v1/chat/completions", json=completion()).json()
    response = client.post(
        "/v1/chat/completions",
        json=completion(stream=True, stream_options={"include_usage": True}),
    )
    blocks = response.text.strip().split("\n\n")
    assert blocks[-1] == "data: [DONE]"
    chunks = [json.loads(b.removeprefix("data: ")) for b in blocks[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == whole["choices"][0]["message"]["content"]
    finish = chunks[-2]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert finish["ragtune"]["sources"] == whole["ragtune"]["sources"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]


def test_content_parts_developer_role_and_extensions(client: TestClient) -> None:
    body = completion(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "kitchen "},
                    {"type": "text", "text": "bread"},
                ],
            },
        ],
        filters={"file_type": "md"},
        top_k=2,
        user="someone",
        presence_penalty=0,
    )
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    sources = response.json()["ragtune"]["sources"]
    assert len(sources) == 2
    assert all(s["source"].endswith(".md") for s in sources)


@pytest.mark.parametrize(
    ("extra", "status", "param", "message"),
    [
        ({"model": "gpt-4"}, 404, None, "route 'gpt-4' does not exist"),
        ({"n": 2}, 422, None, "only n=1"),
        ({"tools": [{"type": "function"}]}, 422, None, "tool calling is not supported"),
        (
            {"response_format": {"type": "json_object"}},
            422,
            None,
            "output format is part of the route",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, 422, None, "'tool' messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            422,
            None,
            "only text parts",
        ),
        ({"temperature": 3}, 422, "temperature", "less than or equal to 2"),
        ({"messages": "hi"}, 422, "messages", "valid list"),
        ({"max_tokens": 2, "max_completion_tokens": 3}, 422, None, "send one of them"),
        # The engines' bound on stop sequences, on OpenAI's body too (was a 500).
        ({"stop": [f"s{i}" for i in range(9)]}, 422, None, "stop: List should have at most 8"),
        ({"top_p": 0}, 422, "top_p", "greater than 0"),
    ],
)
def test_openai_errors_are_in_openai_shape(
    client: TestClient, extra: dict[str, Any], status: int, param: str | None, message: str
) -> None:
    response = client.post("/v1/chat/completions", json=completion(**extra))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    if param:
        assert error["param"] == param


def test_streaming_request_that_is_invalid_fails_before_streaming(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=completion(stream=True, model="nope"))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
