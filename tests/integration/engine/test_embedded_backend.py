"""The embedded engine on the tiny model with real PEFT adapters."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.embedded import EmbeddedBackend
from engine.types import ChatMessage, Completion, GenerationRequest, SamplingParams
from ragtune.errors import AdapterError, InvalidInput, NotFound
from ragtune.settings import LLMSettings
from tests.conftest import TinyModel
from tests.fixtures.tiny_model import YES_NO_SCHEMA as SCHEMA


def request(
    adapter: str | None = None, text: str = "hello world", **sampling: Any
) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        adapter=adapter,
        sampling=SamplingParams(**{"max_tokens": 12, **sampling}),
    )


@pytest.fixture
def backend(tiny_model: TinyModel) -> Iterator[EmbeddedBackend]:
    engine = EmbeddedBackend.load(str(tiny_model.path), LLMSettings(max_loras=2))
    yield engine
    asyncio.run(engine.aclose())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_greedy_is_deterministic_and_counts_tokens(backend: EmbeddedBackend) -> None:
    first = run(backend.generate(request()))
    again = run(backend.generate(request()))
    assert first.token_ids == again.token_ids
    assert first.finish_reason == "length"
    assert first.usage.completion_tokens == 12 == len(first.token_ids)
    assert first.usage.prompt_tokens > 0


def test_adapter_output_matches_peft_merged_weights(
    backend: EmbeddedBackend, tiny_model: TinyModel
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run(backend.load_adapter("alpha", tiny_model.adapters["alpha"]))
    ours = run(backend.generate(request("alpha")))
    base = run(backend.generate(request()))
    assert ours.token_ids != base.token_ids

    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32),
        str(tiny_model.adapters["alpha"]),
    ).merge_and_unload()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hello world"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = merged.generate(**ids, max_new_tokens=12, do_sample=False)
    assert ours.token_ids == out[0, ids["input_ids"].shape[1] :].tolist()


def test_stream_pieces_add_up_to_the_whole_answer(backend: EmbeddedBackend) -> None:
    async def collect() -> tuple[list[Any], Completion]:
        deltas = [d async for d in backend.stream(request(max_tokens=20))]
        return deltas, await backend.generate(request(max_tokens=20))

    deltas, whole = run(collect())
    assert "".join(d.text for d in deltas) == whole.text
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage == whole.usage
    assert all(d.finish_reason is None for d in deltas[:-1])


def test_concurrent_requests_each_get_their_own_adapter(
    backend: EmbeddedBackend, tiny_model: TinyModel
) -> None:
    async def scenario() -> None:
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        await backend.load_adapter("beta", tiny_model.adapters["beta"])
        solo = {
            name: (await backend.generate(request(name))).token_ids
            for name in (None, "alpha", "beta")
        }
        names = [None, "alpha", "beta"] * 4
        results = await asyncio.gather(*(backend.generate(request(n)) for n in names))
        assert [r.token_ids for r in results] == [solo[n] for n in names]
        assert await backend.list_adapters() == ["alpha", "beta"]

    run(scenario())


def test_unload_waits_for_requests_in_flight_then_refuses(
    backend: EmbeddedBackend, tiny_model: TinyModel
) -> None:
    async def scenario() -> None:
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        expected = (await backend.generate(request("alpha", max_tokens=64))).token_ids
        in_flight = asyncio.create_task(backend.generate(request("alpha", max_tokens=64)))
        await asyncio.sleep(0)  # the request is queued first
        await backend.unload_adapter("alpha")
        assert (await in_flight).token_ids == expected
        with pytest.raises(NotFound, match=r"adapter 'alpha' is not loaded \(loaded: none\)"):
            await backend.generate(request("alpha"))
        # Reloading serves the same weights again.
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        assert (await backend.generate(request("alpha", max_tokens=64))).token_ids == expected

    run(scenario())


def test_base_output_is_unchanged_by_loading_and_unloading(
    backend: EmbeddedBackend, tiny_model: TinyModel
) -> None:
    before = run(backend.generate(request())).token_ids
    run(backend.load_adapter("alpha", tiny_model.adapters["alpha"]))
    assert run(backend.generate(request())).token_ids == before
    run(backend.unload_adapter("alpha"))
    assert run(backend.generate(request())).token_ids == before


def test_adapter_limits_are_those_of_vllm(
    backend: EmbeddedBackend, tiny_model: TinyModel, tmp_path: Path
) -> None:
    with pytest.raises(AdapterError, match="rank 32, above max_lora_rank 16"):
        run(backend.load_adapter("big", tiny_model.adapters["too-big"]))
    run(backend.load_adapter("alpha", tiny_model.adapters["alpha"]))
    run(backend.load_adapter("alpha", tiny_model.adapters["alpha"]))  # same folder: no-op
    with pytest.raises(AdapterError, match="already loaded from"):
        run(backend.load_adapter("alpha", tiny_model.adapters["beta"]))
    run(backend.load_adapter("beta", tiny_model.adapters["beta"]))
    copy = shutil.copytree(tiny_model.adapters["beta"], tmp_path / "gamma")
    with pytest.raises(AdapterError, match=r"limit \(max_loras\) is 2; unload one first"):
        run(backend.load_adapter("gamma", copy))
    with pytest.raises(NotFound, match="does not exist"):
        run(backend.load_adapter("x", tmp_path / "missing"))
    with pytest.raises(NotFound, match="cannot be unloaded"):
        run(backend.unload_adapter("never-loaded"))


def test_broken_adapters_are_refused_with_the_reason(
    backend: EmbeddedBackend, tiny_model: TinyModel, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_model.adapters["alpha"], tmp_path / "ia3")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(AdapterError, match="only LORA is served"):
        run(backend.load_adapter("ia3", folder))
    head = shutil.copytree(tiny_model.adapters["alpha"], tmp_path / "head")
    (head / "adapter_config.json").write_text(
        json.dumps({**config, "target_modules": ["q_proj", "lm_head"]})
    )
    with pytest.raises(AdapterError, match="targets lm_head"):
        run(backend.load_adapter("head", head))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"adapter_config\.json is missing"):
        run(backend.load_adapter("empty", tmp_path / "empty"))
    assert run(backend.list_adapters()) == []


def test_json_schema_output_satisfies_the_schema(backend: EmbeddedBackend) -> None:
    req = request(text="Is the sky blue? Answer in JSON.", max_tokens=40)
    req.json_schema = SCHEMA
    out = run(backend.generate(req))
    value = json.loads(out.text)
    assert value["answer"] in ("yes", "no")
    assert isinstance(value["sure"], bool)
    assert set(value) == {"answer", "sure"}
    assert out.finish_reason == "stop"


def test_stop_strings_end_the_answer_before_them(backend: EmbeddedBackend) -> None:
    full = run(backend.generate(request(max_tokens=12))).text
    stop = full[4:6]
    cut = run(backend.generate(request(max_tokens=12, stop=[stop])))
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = run(_join(backend, request(max_tokens=12, stop=[stop])))
    assert streamed == cut.text


async def _join(backend: EmbeddedBackend, req: GenerationRequest) -> str:
    return "".join([d.text async for d in backend.stream(req)])


def test_a_prompt_beyond_the_context_is_refused(backend: EmbeddedBackend) -> None:
    with pytest.raises(InvalidInput, match="more than the model's context of 2048 tokens"):
        run(backend.generate(request(text="hello " * 3000)))


def test_sampling_with_a_seed_is_reproducible(backend: EmbeddedBackend) -> None:
    a = run(backend.generate(request(temperature=1.0, seed=7, max_tokens=16)))
    b = run(backend.generate(request(temperature=1.0, seed=7, max_tokens=16)))
    assert a.token_ids == b.token_ids


def test_unloading_the_active_adapter_keeps_the_others_working(
    backend: EmbeddedBackend, tiny_model: TinyModel
) -> None:
    async def scenario() -> None:
        await backend.load_adapter("alpha", tiny_model.adapters["alpha"])
        await backend.load_adapter("beta", tiny_model.adapters["beta"])
        alpha = (await backend.generate(request("alpha"))).token_ids
        await backend.generate(request("beta"))  # beta is now PEFT's active adapter
        await backend.unload_adapter("beta")
        assert (await backend.generate(request("alpha"))).token_ids == alpha
        assert await backend.list_adapters() == ["alpha"]

    run(scenario())
