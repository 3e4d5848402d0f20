"""The Qdrant server unreachable, slow, or failing mid-request, through a fault-injecting
proxy, and healed again without restarting the API.

A question on a route that retrieves gets 503 naming Qdrant (with Retry-After) within
qdrant.timeout_s, a streamed one too (retrieval runs before the stream's 200 is sent), and
/readyz reports Qdrant unavailable; once the proxy is healed the next question is answered
with the same sources. Serving never writes: the collection is the same after every fault.

Statuses a Qdrant server answers with (401, 404, 5xx...) are tests/integration/service/api/
test_qdrant_errors.py's; these are the transport's failures. The same tests run against the
fake server (tests/fixtures/fake_qdrant.py) and, when RAGTUNE_TEST_QDRANT_URL names one, a
real Qdrant server, with a collection of their own that is dropped afterwards.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ingest.store import open_store
from ragtune.settings import Settings
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app
from tests.fixtures.collections import differences, snapshot
from tests.fixtures.fake_qdrant import FakeQdrant, fake_qdrant
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.scripted_backend import ScriptedBackend
from tests.integration.faults.served import (
    Outcome,
    ask,
    captured_answers,
    wait_ready,
    write_routes,
)

SERVER_ENV = "RAGTUNE_TEST_QDRANT_URL"
# Whole seconds: qdrant-client takes its timeout as an integer.
TIMEOUT_S = 1
# Bytes of an answer from Qdrant that get through before the cut (the fake's headers are ~140).
MID_ANSWER = 150


@dataclass
class Served:
    proxy: FaultProxy
    client: TestClient
    settings: Settings
    # The sources a healthy Qdrant gives for the question (none from the fake).
    sources: list[str]
    # Asserts that the collection is as it was: compared past the proxy on a real server;
    # on the fake, which holds no points, that it was sent nothing but reads.
    unchanged: Callable[[], None]
    answered: int = 0  # answers on `docs`
    plain: int = 0  # answers on `ask`, which does not retrieve

    def ok(self, outcome: Outcome) -> None:
        assert _sources(outcome) == self.sources
        self.answered += 1

    def nothing_changed(self) -> None:
        """The collection is unchanged, and every answer served (and no failed one) was
        captured."""
        self.unchanged()
        data = self.settings.data_dir
        assert len(captured_answers(data, "docs", self.answered)) == self.answered
        assert len(captured_answers(data, "ask", self.plain)) == self.plain


def _sources(outcome: Outcome) -> list[str]:
    """The answer's sources, by document: ragtune's body, a stream's sources event or the
    OpenAI body's `ragtune` member."""
    assert outcome.status == 200, outcome
    if outcome.events:
        first = outcome.events[0]
        assert outcome.events[-2]["type"] == "done", outcome.events
        return [s["doc_id"] for s in first["sources"]]
    body = outcome.body.get("ragtune", outcome.body)
    return [s["doc_id"] for s in body["sources"]]


def _serve(
    upstream: str, home: Path, model: Path, unchanged: Callable[[], None], collection: str
) -> Iterator[Served]:
    with FaultProxy.to_url(upstream).running() as proxy:
        settings = api_settings(
            home,
            model,
            api={"routes_file": write_routes(home, collection)},
            qdrant={"url": proxy.url, "timeout_s": TIMEOUT_S},
        )
        with running_app(settings, lambda _: [ScriptedBackend("an answer")]) as client:
            sources = _sources(ask(client, "docs"))
            yield Served(proxy, client, settings, sources, unchanged, answered=1)


def _no_writes(fake: FakeQdrant) -> Callable[[], None]:
    def check() -> None:
        reads = ("/points/query", "/points/scroll", "/points/count")
        writes = [
            r
            for r in fake.requests
            if not (r.startswith("GET ") or (r.startswith("POST ") and r.endswith(reads)))
        ]
        assert writes == []

    return check


@pytest.fixture(scope="module", params=["fake", "server"])
def served(
    request: pytest.FixtureRequest, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    home = tmp_path_factory.mktemp(f"qdrant-{request.param}")
    if request.param == "fake":
        with fake_qdrant(api_settings(home, tiny_model.path)) as fake:
            yield from _serve(fake.url, home, tiny_model.path, _no_writes(fake), "docs")
        return
    url = os.environ.get(SERVER_ENV)
    if not url:
        pytest.skip(f"{SERVER_ENV} is not set: no real Qdrant server to put the proxy before")
    # A collection of this module's own on the server, written and checked past the proxy.
    direct = api_settings(home, tiny_model.path, qdrant={"url": url})
    name = f"ragtune-faults-{uuid.uuid4().hex[:8]}"
    ingest_corpus(direct, collection=name)
    store = open_store(direct)
    before = snapshot(store, name)

    def unchanged() -> None:
        assert differences(before, snapshot(store, name)) == []

    try:
        yield from _serve(url, home, tiny_model.path, unchanged, name)
    finally:
        store.drop(name)
        store.close()


@pytest.fixture
def healed(served: Served) -> Iterator[Served]:
    """`served`, healed after the test even when it failed, so the next test starts clean."""
    try:
        yield served
    finally:
        served.proxy.heal()
        wait_ready(served.client)


Fault = Callable[[FaultProxy], None]
FAULTS: dict[str, Fault] = {
    "unreachable": lambda p: p.refuse(),
    "timing out": lambda p: p.blackhole(),
    "slower than qdrant.timeout_s": lambda p: p.delay(2 * TIMEOUT_S),
    "failing mid-request": lambda p: p.cut(MID_ANSWER),
    "reset mid-request": lambda p: p.cut(MID_ANSWER, reset=True),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_qdrant_answers_503_naming_it_then_recovers(healed: Served, fault: str) -> None:
    FAULTS[fault](healed.proxy)
    for stream, via_openai in ((False, False), (True, False), (False, True)):
        outcome = ask(healed.client, "docs", stream=stream, openai=via_openai)
        # A stream too: retrieval runs before its 200 goes out, so the error is a plain one.
        assert outcome.status == 503, outcome
        assert not outcome.events
        assert outcome.headers["retry-after"] == str(healed.settings.api.retry_after_s)
        assert outcome.error["code"] == "UpstreamUnavailable"
        assert re.search(
            r"Qdrant at http://127\.0\.0\.1:\d+ did not answer .*check that it is running",
            outcome.error["message"],
        ), outcome.error
        # Once for the search, within the timeout: never a hang.
        assert outcome.seconds < TIMEOUT_S + 2, outcome

    # A route that does not retrieve still answers meanwhile.
    plain = ask(healed.client, "ask")
    assert plain.status == 200, plain
    healed.plain += 1

    ready = healed.client.get("/readyz")
    if fault == "unreachable":  # /readyz lists the collections (a blackhole: the same, later)
        assert ready.status_code == 503
        assert "Qdrant at " in ready.json()["checks"]["qdrant"]

    healed.proxy.heal()
    wait_ready(healed.client)
    healed.ok(ask(healed.client, "docs"))
    healed.ok(ask(healed.client, "docs", stream=True))
    healed.ok(ask(healed.client, "docs", openai=True))
    healed.nothing_changed()


def test_a_slow_qdrant_within_the_timeout_still_answers(healed: Served) -> None:
    delay = TIMEOUT_S / 4
    healed.proxy.delay(delay)
    outcome = ask(healed.client, "docs")
    healed.ok(outcome)
    assert outcome.seconds >= delay
    healed.nothing_changed()
