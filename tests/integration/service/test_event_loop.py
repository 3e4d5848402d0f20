"""Nothing blocks the event loop while the API serves: asyncio's debug mode reports every
callback that holds the loop longer than `slow_callback_duration`, and any such report while
serving chat with retrieval, summaries and adapter uploads fails the test. The store, the
embedder and the tokenizer run on threads of their own, so a busy default thread pool does not
hold up a question either."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.tokens import TokenCounter
from service.app import create_app
from tests.conftest import TinyModel
from tests.fixtures.api import admin_headers, api_settings, ingest_corpus

# A callback holding the loop this long is reported (asyncio's default: longer is a stall
# anyone notices, shorter reports a loaded machine's scheduling).
SLOW_CALLBACK_S = 0.1
# An upload this large, written on the loop in one piece (TestClient sends the body as one
# message), holds it well over SLOW_CALLBACK_S.
BIG_UPLOAD_BYTES = 256 << 20
# Long enough for a request on a loaded machine, short enough that a request stuck behind
# parked threads fails the test instead of hanging it.
REQUEST_TIMEOUT_S = 30.0
ROUTES = """\
routes:
  chat:
    kind: chat
    retrieval: {collection: docs, top_k: 5, context_tokens: 1500}
    prompt: {system: "Sources:\\n{context}", user: "{question}"}
    generation: {max_tokens: 4}
  summarize:
    kind: summarize
    retrieval: {collection: docs}
    prompt: {user: "Summarize: {text}"}
    generation: {max_tokens: 4}
    summarize: {piece_tokens: 4000, piece_summary_tokens: 16}
    overrides: {filters: true}
"""


class SlowCallbacks(logging.Handler):
    """asyncio's "Executing <callback> took N seconds" reports, each with the step (a
    request) that was running, kept while attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.step = ""
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing "):
            self.reports.append(f"{self.step}: {message}")


@contextmanager
def slow_callbacks() -> Iterator[SlowCallbacks]:
    """The slow-callback reports asyncio logs while the block runs."""
    handler = SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def debug_loop() -> asyncio.AbstractEventLoop:
    """asyncio's own loop (uvloop has no debug mode) reporting callbacks over SLOW_CALLBACK_S;
    the portal turns debug mode on."""
    loop = asyncio.new_event_loop()
    loop.slow_callback_duration = SLOW_CALLBACK_S
    return loop


@dataclass
class Api:
    client: TestClient
    loop: asyncio.AbstractEventLoop
    adapter: Path


@pytest.fixture(scope="module")
def api(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("event-loop")
    (root / "routes.yaml").write_text(ROUTES)
    settings = api_settings(
        root,
        tiny_model.path,
        api={"routes_file": root / "routes.yaml", "request_timeout_s": REQUEST_TIMEOUT_S},
        admin={"max_upload_bytes": 2 * BIG_UPLOAD_BYTES},
    )
    ingest_corpus(settings)
    app = create_app(settings)
    options = {"debug": True, "loop_factory": debug_loop}
    with TestClient(app, raise_server_exceptions=False, backend_options=options) as client:
        loop = client.portal.call(asyncio.get_running_loop)
        assert loop.get_debug()
        yield Api(client=client, loop=loop, adapter=tiny_model.adapters["alpha"])


def ask(question: str) -> dict[str, Any]:
    return {"route": "chat", "messages": [{"role": "user", "content": question}]}


def zipped(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


def test_serving_never_holds_the_event_loop(api: Api) -> None:
    client = api.client
    questions = [
        "How do orchard keepers prune apple trees?",
        "What powers the Voyager probes?",
        "When is high tide at the harbour?",
        "How long should bread dough be kneaded?",
    ]
    # Built before watching: making them holds the GIL, and with it the loop's thread.
    adapter = zipped(api.adapter)
    junk = bytes(BIG_UPLOAD_BYTES)
    with slow_callbacks() as watch:
        for question in questions:
            watch.step = f"chat {question!r}"
            response = client.post("/v1/chat", json=ask(question))
            assert response.status_code == 200, response.text
            assert response.json()["sources"]
        watch.step = "streamed chat"
        streamed = client.post("/v1/chat", json={**ask(questions[0]), "stream": True})
        assert streamed.status_code == 200, streamed.text
        watch.step = "summary of documents"
        summary = client.post(
            "/v1/summarize", json={"route": "summarize", "filters": {"file_type": "md"}}
        )
        assert summary.status_code == 200, summary.text
        assert summary.json()["documents"][0]["title"] == "Kitchen guide"
        watch.step = "adapter upload"
        upload = client.post(
            "/admin/adapters/upload",
            params={"name": "loop-check"},
            content=adapter,
            headers=admin_headers(),
        )
        assert upload.status_code == 201, upload.text
        watch.step = f"upload of {BIG_UPLOAD_BYTES >> 20} MiB"
        refused = client.post(
            "/admin/adapters/upload",
            params={"name": "loop-check-junk"},
            content=junk,
            headers=admin_headers(),
        )
        # Not an archive: refused once it has been written out and opened.
        assert refused.status_code == 422, refused.text
    assert watch.reports == []


def test_a_busy_default_thread_pool_does_not_hold_up_questions(api: Api) -> None:
    """Jobs parked in the loop's default pool (a lock held inside `asyncio.to_thread` did
    this) leave the store's, embedder's and tokenizer's threads free."""
    gate = threading.Event()
    parked = ThreadPoolExecutor(2, thread_name_prefix="parked")
    api.client.portal.call(api.loop.set_default_executor, parked)
    for _ in range(2):
        parked.submit(gate.wait, 2 * REQUEST_TIMEOUT_S)
    try:
        response = api.client.post("/v1/chat", json=ask("What powers the Voyager probes?"))
    finally:
        gate.set()
    assert response.status_code == 200, response.text
    assert "Voyager" in response.json()["sources"][0]["snippet"]


def test_sources_are_tokenized_on_the_tokenizer_thread(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off the loop, and on one thread: the counter's cache of token offsets needs no lock."""
    threads: list[str] = []
    ends_many = TokenCounter.ends_many

    def spy(self: TokenCounter, texts: list[str]) -> Any:
        threads.append(threading.current_thread().name)
        return ends_many(self, texts)

    monkeypatch.setattr(TokenCounter, "ends_many", spy)
    response = api.client.post("/v1/chat", json=ask("What does a sourdough starter need?"))
    assert response.status_code == 200, response.text
    assert threads
    assert all(name.startswith("ragtune-tokens") for name in threads), threads
