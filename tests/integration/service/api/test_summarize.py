"""POST /v1/summarize: text and ingested documents, map-reduce over long inputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.types import GenerationRequest
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app
from tests.fixtures.scripted_backend import ScriptedBackend

ROUTES = """
routes:
  summarize:
    kind: summarize
    retrieval: {collection: docs}
    prompt:
      system: Summarize faithfully.
      user: "MAP {text}"
      reduce: "REDUCE {text}"
    generation: {max_tokens: 40}
    summarize: {piece_tokens: 64, piece_summary_tokens: 16, concurrency: 2}
    overrides: {filters: true}
  shaped:
    kind: summarize
    prompt: {user: "{text}"}
    output:
      type: json
      schema: {type: object, properties: {summary: {type: string}}, required: [summary]}
"""


def reply(request: GenerationRequest) -> str:
    """A 'summary' that is the first three words of what it was given."""
    text = request.messages[-1].content.split(" ", 1)[1]
    return " ".join(text.split()[:3])


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend(reply)


@pytest.fixture(scope="module")
def client(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory, backend: ScriptedBackend
) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("summarize")
    (root / "routes.yaml").write_text(ROUTES)
    settings = api_settings(root, tiny_model.path, api={"routes_file": root / "routes.yaml"})
    ingest_corpus(settings)
    with running_app(settings, lambda _: [backend]) as client:
        yield client


def post(client: TestClient, body: dict[str, Any]) -> Any:
    response = client.post("/v1/summarize", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_short_text_is_one_call(client: TestClient, backend: ScriptedBackend) -> None:
    before = len(backend.requests)
    body = post(client, {"text": "Apples grow on trees in orchards."})
    assert body["pieces"] == 1
    assert body["reduce_rounds"] == 0
    assert body["summary"] == "Apples grow on"
    assert len(backend.requests) == before + 1
    assert backend.requests[-1].messages[0].content == "Summarize faithfully."


def test_long_text_is_mapped_then_reduced(client: TestClient, backend: ScriptedBackend) -> None:
    paragraphs = [f"Paragraph {i} " + "word " * 40 for i in range(8)]
    before = len(backend.requests)
    body = post(client, {"text": "\n\n".join(paragraphs)})
    calls = backend.requests[before:]
    maps = [c for c in calls if c.messages[-1].content.startswith("MAP")]
    reduces = [c for c in calls if c.messages[-1].content.startswith("REDUCE")]
    assert body["pieces"] == len(maps) > 1
    assert body["reduce_rounds"] >= 1
    assert len(reduces) >= 1
    # Piece summaries are capped by piece_summary_tokens, the final one by max_tokens.
    assert {c.sampling.max_tokens for c in maps} == {16}
    assert calls[-1].sampling.max_tokens == 40
    assert body["summary"].startswith("Paragraph 0")
    assert body["usage"]["total_tokens"] > 0


def test_documents_by_id_and_by_filter(client: TestClient, tmp_path: Path) -> None:
    as_chat = client.post(
        "/v1/chat", json={"route": "summarize", "messages": [{"role": "user", "content": "x"}]}
    )
    assert as_chat.status_code == 422  # a summarize route is not a chat route
    body = post(client, {"filters": {"file_type": "md"}})
    assert [d["title"] for d in body["documents"]] == ["Kitchen guide"]
    assert body["documents"][0]["chunks"] >= 2
    doc_id = body["documents"][0]["doc_id"]
    again = post(client, {"doc_ids": [doc_id]})
    assert again["documents"] == body["documents"]
    # The scripted "summary" is the first three words of the text: the document's heading.
    assert again["summary"] == "# Kitchen guide"


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({}, 422, "give exactly one of text, doc_ids or filters"),
        ({"text": "a", "doc_ids": ["b"]}, 422, "(got text, doc_ids)"),
        ({"doc_ids": ["no-such-doc"]}, 404, "no ingested document has id 'no-such-doc'"),
        ({"filters": {"file_type": "docx"}}, 404, "no document in collection 'docs' matches"),
        ({"route": "chat", "text": "a"}, 404, "route 'chat' does not exist"),
        ({"route": "shaped", "doc_ids": ["x"]}, 422, "no collection to read documents from"),
        ({"text": "a", "temperature": 9}, 422, "temperature"),
    ],
)
def test_bad_summarize_requests(
    client: TestClient, body: dict[str, Any], status: int, expected: str
) -> None:
    response = client.post("/v1/summarize", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert expected in error["message"] + str(error["param"])


def test_json_output_route_parses_the_summary(tiny_model: TinyModel, tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(ROUTES)
    settings = api_settings(
        tmp_path, tiny_model.path, api={"routes_file": tmp_path / "routes.yaml"}
    )
    backend = ScriptedBackend('{"summary": "short"}')
    with running_app(settings, lambda _: [backend]) as client:
        body = post(client, {"route": "shaped", "text": "Some text."})
    assert body["output"] == {"summary": "short"}
    assert backend.requests[-1].json_schema is not None


def test_summarize_on_the_real_tiny_model(tiny_model: TinyModel, tmp_path: Path) -> None:
    settings = api_settings(tmp_path, tiny_model.path)
    ingest_corpus(settings)
    with running_app(settings) as client:
        body = post(client, {"text": "Tides come twice a day. " * 200, "max_tokens": 8})
        # The tiny model's tokenizer is nearly one token per character: 3 pieces of 1,500.
        assert body["pieces"] == 3
        assert body["reduce_rounds"] == 1
        # Usage adds up every call: three pieces and the final combination.
        assert body["usage"]["completion_tokens"] <= 8 * 4
        docs = post(client, {"filters": {"file_type": "txt"}, "max_tokens": 4})
        assert {d["title"] for d in docs["documents"]} == {"fruit", "voyager"}
