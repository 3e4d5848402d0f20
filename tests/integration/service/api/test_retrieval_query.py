"""retrieval.query through real HTTP: a follow-up that only says "its side effects" finds the
document the conversation is about with `window` and `condense`, not with `last`.

Everything is real (tiny model, embedder, embedded Qdrant) except, where a test says so, the
words of the condense rewrite: the tiny random model cannot write a meaningful question, so a
boundary around the real engine may answer the rewrite call with a fixed text; the mechanics
are checked with the real engine's own rewrite too."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.backend import Backend
from engine.factory import build_backends
from engine.model import default_model_dir, is_prepared
from engine.types import Completion, GenerationRequest, StreamDelta, Usage
from ragtune.settings import Settings
from service.rag.query import clean_rewrite
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app

ZORVATIN = (
    "Zorvatin is a tablet prescribed for migraine headaches. Zorvatin can cause drowsiness, "
    "nausea and a dry mouth; these side effects usually fade after the first week."
)
GUIDE = (
    "Side effects: a general guide. Every medicine can have side effects. Write down the side "
    "effects you notice, and tell your doctor about any side effects that last."
)
TIDES = "High tide at the harbour comes twice a day; spring tides follow the full moon."
ROUTE = """
  {name}:
    kind: chat
    retrieval: {{collection: meds, top_k: 1{query}}}
    prompt: {{system: "Sources:\\n{{context}}", user: "{{question}}"}}
    generation: {{max_tokens: 4}}
"""
ROUTES = "routes:" + "".join(
    ROUTE.format(name=name, query=query)
    for name, query in [
        ("last", ""),
        ("window", ", query: {mode: window, turns: 2}"),
        ("condense", ", query: condense"),
    ]
)
FIRST = "What is Zorvatin used for?"
FOLLOW_UP = "And what about its side effects?"
TALK = [
    {"role": "user", "content": FIRST},
    {"role": "assistant", "content": "It treats migraine headaches [1]."},
    {"role": "user", "content": FOLLOW_UP},
]
REWRITE = "What are the side effects of Zorvatin?"


class RewriteBoundary:
    """The real engine, except that the test may write the condense rewrite (`fixed`); every
    rewrite call, and what came back, is recorded."""

    def __init__(self, engine: Backend) -> None:
        self.engine = engine
        self.name = engine.name
        self.fixed: str | None = None
        self.rewrites: list[tuple[GenerationRequest, Completion]] = []

    async def generate(self, request: GenerationRequest) -> Completion:
        if not request.messages[-1].content.endswith("Standalone question:"):
            return await self.engine.generate(request)
        if self.fixed is None:
            completion = await self.engine.generate(request)
        else:
            words = sum(len(m.content.split()) for m in request.messages)
            usage = Usage(prompt_tokens=words, completion_tokens=len(self.fixed.split()))
            completion = Completion(text=self.fixed, finish_reason="stop", usage=usage)
        self.rewrites.append((request, completion))
        return completion

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        return self.engine.stream(request)

    async def load_adapter(self, name: str, path: Path) -> None:
        await self.engine.load_adapter(name, path)

    async def unload_adapter(self, name: str) -> None:
        await self.engine.unload_adapter(name)

    async def list_adapters(self) -> list[str]:
        return await self.engine.list_adapters()

    async def health(self) -> None:
        await self.engine.health()

    async def aclose(self) -> None:
        await self.engine.aclose()


def meds_settings(root: Path, model: Path) -> Settings:
    """An API on `root` serving `model`, with the three routes and the meds collection."""
    docs = root / "meds"
    docs.mkdir(parents=True)
    for name, text in [("zorvatin", ZORVATIN), ("side-effects", GUIDE), ("tides", TIDES)]:
        (docs / f"{name}.txt").write_text(text)
    routes = root / "routes.yaml"
    routes.write_text(ROUTES)
    settings = api_settings(root, model, api={"routes_file": routes})
    ingest_corpus(settings, docs, collection="meds")
    return settings


@pytest.fixture(scope="module")
def served(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, RewriteBoundary]]:
    settings = meds_settings(tmp_path_factory.mktemp("query"), tiny_model.path)
    made: list[RewriteBoundary] = []

    def backends(settings: Settings) -> list[RewriteBoundary]:
        made.extend(RewriteBoundary(engine) for engine in build_backends(settings))
        return made

    with running_app(settings, backends) as client:
        yield client, made[0]


@pytest.fixture
def api(served: tuple[TestClient, RewriteBoundary]) -> TestClient:
    return served[0]


@pytest.fixture
def rewrite(served: tuple[TestClient, RewriteBoundary]) -> Iterator[RewriteBoundary]:
    """The boundary, reset: the real engine rewrites until a test sets `fixed`."""
    boundary = served[1]
    boundary.fixed = None
    boundary.rewrites.clear()
    yield boundary
    boundary.fixed = None


def chat(client: TestClient, route: str, messages: list[dict[str, str]], **extra: Any) -> Any:
    response = client.post("/v1/chat", json={"route": route, "messages": messages, **extra})
    assert response.status_code == 200, response.text
    return response


def found(body: dict[str, Any]) -> list[tuple[str, int, float]]:
    return [(s["doc_id"], s["chunk_index"], s["score"]) for s in body["sources"]]


def top_document(body: dict[str, Any]) -> str:
    return Path(body["sources"][0]["doc_id"]).stem


def stage_count(client: TestClient, route: str, stage: str) -> float:
    pattern = f'ragtune_stage_seconds_count{{route="{route}",stage="{stage}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(pattern):
            return float(line.removeprefix(pattern))
    return 0.0


def test_the_follow_up_alone_misses_the_document_and_each_turn_alone_finds_its_own(
    api: TestClient,
) -> None:
    body = chat(api, "last", TALK).json()
    assert top_document(body) == "side-effects"
    assert "retrieval_query" not in body  # a route on the default answers as before
    assert top_document(chat(api, "last", TALK[:1]).json()) == "zorvatin"


def test_window_finds_the_document_from_the_earlier_turn(api: TestClient) -> None:
    body = chat(api, "window", TALK).json()
    assert top_document(body) == "zorvatin"
    assert body["retrieval_query"] == {
        "mode": "window",
        "text": f"{FIRST}\n{FOLLOW_UP}",
        "fallback": False,
        "usage": None,
        "time_ms": None,
    }
    # The window is what is searched: the same sources as asking it in one message.
    assert found(body) == found(
        chat(api, "last", [{"role": "user", "content": FIRST + "\n" + FOLLOW_UP}]).json()
    )


def test_a_condensed_question_naming_the_document_finds_it(
    api: TestClient, rewrite: RewriteBoundary
) -> None:
    rewrite.fixed = f"Standalone question: {REWRITE}\nZorvatin is a migraine tablet."
    response = chat(api, "condense", TALK)
    body = response.json()
    assert top_document(body) == "zorvatin"
    query = body["retrieval_query"]
    assert query["mode"] == "condense"
    assert query["text"] == REWRITE
    assert not query["fallback"]
    assert "condense;dur=" in response.headers["server-timing"]
    # The rewrite: the base model, greedy, short, shown the conversation and the question.
    ((request, _),) = rewrite.rewrites
    assert request.adapter is None
    assert request.sampling.temperature == 0.0
    assert request.sampling.max_tokens == 64
    prompt = request.messages[-1].content
    assert f"User: {FIRST}\nAssistant: It treats migraine headaches [1]." in prompt
    assert f"Latest user question: {FOLLOW_UP}" in prompt
    # The answer is asked the caller's question, with the conversation; the rewrite only
    # chose the sources.
    assert "side effects usually fade" in body["sources"][0]["snippet"]


@pytest.mark.parametrize("engine", ["fixed rewrite", "tiny model"])
def test_condense_searches_with_the_rewrite_and_reports_it_as_a_stage(
    api: TestClient, rewrite: RewriteBoundary, engine: str
) -> None:
    if engine == "fixed rewrite":
        rewrite.fixed = REWRITE
    before = stage_count(api, "condense", "condense")
    response = chat(api, "condense", TALK)
    body = response.json()
    ((_, completion),) = rewrite.rewrites
    query = body["retrieval_query"]
    cleaned = clean_rewrite(completion.text)
    assert query["text"] == (cleaned or FOLLOW_UP)
    assert query["fallback"] is (not cleaned)
    assert query["usage"] == {
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "total_tokens": completion.usage.prompt_tokens + completion.usage.completion_tokens,
    }
    assert query["usage"]["prompt_tokens"] > 40  # the prompt and the conversation
    assert query["time_ms"] > 0
    # Apart from the answer's own tokens.
    assert body["usage"]["completion_tokens"] == 4
    timing = re.search(r"condense;dur=([\d.]+)", response.headers["server-timing"])
    assert timing is not None
    assert stage_count(api, "condense", "condense") == before + 1
    # What is searched is the rewrite: the same sources as asking it in one message.
    asked = chat(api, "last", [{"role": "user", "content": query["text"]}]).json()
    assert found(body) == found(asked)


def test_an_empty_rewrite_falls_back_to_the_last_message(
    api: TestClient, rewrite: RewriteBoundary
) -> None:
    rewrite.fixed = "  \n Standalone question: \n"
    body = chat(api, "condense", TALK).json()
    assert body["retrieval_query"]["text"] == FOLLOW_UP
    assert body["retrieval_query"]["fallback"] is True
    assert body["retrieval_query"]["usage"] is not None  # the model was asked all the same
    assert found(body) == found(chat(api, "last", TALK).json())


def test_a_first_question_is_searched_as_is_without_asking_the_model(
    api: TestClient, rewrite: RewriteBoundary
) -> None:
    before = stage_count(api, "condense", "condense")
    messages = [{"role": "system", "content": "Be brief."}, TALK[0]]
    response = chat(api, "condense", messages)
    body = response.json()
    assert rewrite.rewrites == []
    assert body["retrieval_query"] == {
        "mode": "condense",
        "text": FIRST,
        "fallback": False,
        "usage": None,
        "time_ms": None,
    }
    assert "condense" not in response.headers["server-timing"]
    assert stage_count(api, "condense", "condense") == before
    assert top_document(body) == "zorvatin"


def test_a_streamed_answer_reports_the_query_when_done(
    api: TestClient, rewrite: RewriteBoundary
) -> None:
    rewrite.fixed = REWRITE
    text = chat(api, "condense", TALK, stream=True).text
    events = [json.loads(b.removeprefix("data: ")) for b in text.strip().split("\n\n")[:-1]]
    assert Path(events[0]["sources"][0]["doc_id"]).stem == "zorvatin"
    done = events[-1]
    assert done["type"] == "done"
    assert done["retrieval_query"]["text"] == REWRITE
    assert done["retrieval_query"]["usage"]["completion_tokens"] == len(REWRITE.split())
    assert "retrieval_query" not in events[0]


@pytest.mark.parametrize(
    ("route", "document"),
    [("last", "side-effects"), ("window", "zorvatin"), ("condense", "zorvatin")],
)
def test_the_openai_endpoint_builds_the_query_the_same_way(
    api: TestClient, rewrite: RewriteBoundary, route: str, document: str
) -> None:
    rewrite.fixed = REWRITE
    response = api.post(
        "/v1/chat/completions", json={"model": route, "messages": TALK, "max_tokens": 3}
    )
    assert response.status_code == 200, response.text
    extra = response.json()["ragtune"]
    assert Path(extra["sources"][0]["doc_id"]).stem == document
    assert len(rewrite.rewrites) == (route == "condense")
    searched = extra["retrieval_query"]
    if route == "last":
        assert searched is None
    else:
        assert searched["mode"] == route
        assert (searched["text"] == REWRITE) == (route == "condense")


@pytest.mark.slow
def test_the_default_model_condenses_a_follow_up_into_the_document(
    tmp_path: Path,
) -> None:
    """The shipped base model (`ragtune model prepare`) writes a rewrite that finds it."""
    model = default_model_dir(Settings())
    if not is_prepared(model):
        pytest.skip(f"the default model is not prepared in {model} (`ragtune model prepare`)")
    settings = meds_settings(tmp_path, model.resolve())
    with running_app(settings) as client:
        response = chat(client, "condense", TALK)
    body = response.json()
    assert "zorvatin" in body["retrieval_query"]["text"].lower(), body["retrieval_query"]
    assert not body["retrieval_query"]["fallback"]
    assert top_document(body) == "zorvatin"
