"""The backend pool's failover: members that fail before answering are skipped, and when
every member failed the caller gets the last one's error (a domain error, never an assert)."""

from __future__ import annotations

import asyncio

import pytest

from engine.pool import BackendPool
from engine.types import ChatMessage, GenerationRequest
from ragtune.errors import NotFound, UpstreamUnavailable
from tests.fixtures.scripted_backend import ScriptedBackend

REQUEST = GenerationRequest(messages=[ChatMessage(role="user", content="hi")])


def down(label: str) -> ScriptedBackend:
    return ScriptedBackend(fail=UpstreamUnavailable(f"{label} did not answer"))


async def _stream(pool: BackendPool, request: GenerationRequest) -> str:
    return "".join([d.text async for d in pool.stream(request)])


def test_a_member_down_is_skipped_and_leaves_rotation() -> None:
    pool = BackendPool([down("first"), ScriptedBackend("second answers")])
    assert asyncio.run(pool.generate(REQUEST)).text == "second answers"
    assert pool.up == [False, True]
    assert asyncio.run(_stream(pool, REQUEST)) == "second answers"


def test_every_member_down_raises_the_last_ones_error() -> None:
    pool = BackendPool([down("first"), down("second")])
    with pytest.raises(UpstreamUnavailable, match="second did not answer"):
        asyncio.run(pool.generate(REQUEST))
    assert pool.up == [False, False]
    with pytest.raises(UpstreamUnavailable, match="no scripted x2 backend is answering"):
        asyncio.run(_stream(pool, REQUEST))


def test_streams_fail_over_the_same_way() -> None:
    pool = BackendPool([down("first"), down("second")])
    with pytest.raises(UpstreamUnavailable, match="second did not answer"):
        asyncio.run(_stream(pool, REQUEST))


def test_an_adapter_no_member_holds_is_not_found() -> None:
    pool = BackendPool([ScriptedBackend(), ScriptedBackend()])
    request = REQUEST.model_copy(update={"adapter": "tone@1"})
    with pytest.raises(NotFound, match="tone@1"):
        asyncio.run(pool.generate(request))
    with pytest.raises(NotFound, match="tone@1"):
        asyncio.run(_stream(pool, request))
    assert pool.up == [True, True]
