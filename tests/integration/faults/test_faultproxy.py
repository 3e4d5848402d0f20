"""The fault proxy itself, in front of the stub OpenAI server, with a keep-alive HTTP client:
each mode does what the fault tests rely on, and healing restores the same address."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.faultproxy import FaultProxy
from tests.integration.faults.openai_stub import OpenAIStub

CHAT = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def proxy() -> Iterator[FaultProxy]:
    with OpenAIStub().serving() as stub, FaultProxy.to_url(stub.url).running() as proxy:
        yield proxy


@pytest.fixture
def http(proxy: FaultProxy) -> Iterator[httpx.Client]:
    proxy.heal()
    with httpx.Client(base_url=proxy.url, timeout=0.5) as client:
        yield client
    proxy.heal()


def test_refused_then_healed_on_the_same_port(proxy: FaultProxy, http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    proxy.refuse()
    with pytest.raises(httpx.ConnectError):
        http.get("/health")
    proxy.heal()
    assert http.get("/health").status_code == 200


def test_blackhole_and_stall_never_answer(proxy: FaultProxy, http: httpx.Client) -> None:
    proxy.blackhole()
    with pytest.raises(httpx.ReadTimeout):
        http.get("/health")
    proxy.stall(300)
    with (
        pytest.raises(httpx.ReadTimeout),
        http.stream("POST", "/v1/chat/completions", json=CHAT) as response,
    ):
        response.read()


def test_delay_slows_each_answer(proxy: FaultProxy, http: httpx.Client) -> None:
    proxy.delay(0.2)
    started = time.perf_counter()
    assert http.get("/health").status_code == 200
    assert time.perf_counter() - started >= 0.2


def test_a_cut_counts_each_answer_on_a_kept_alive_connection(
    proxy: FaultProxy, http: httpx.Client
) -> None:
    models = len(http.get("/v1/models").content) + 200  # with its headers
    proxy.cut(models + 50)
    for _ in range(3):  # answers shorter than the cut pass, however many on one connection
        assert http.get("/v1/models").status_code == 200
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/chat/completions", json=CHAT) as response,
    ):
        response.read()
    proxy.reset()
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.get("/health")
