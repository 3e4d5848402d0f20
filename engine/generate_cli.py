"""`ragtune generate`: one chat turn against the configured backend, with or without an adapter."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from engine.factory import build_backend
from engine.types import ChatMessage, GenerationRequest, SamplingParams
from ragtune.errors import InvalidInput
from ragtune.settings import Settings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser(
        "generate",
        help="generate an answer with the base model or a LoRA adapter (embedded engine, or "
        "vLLM when RAGTUNE_LLM__VLLM_URL is set)",
    )
    g.add_argument("prompt", help="the user message")
    g.add_argument("--system", help="a system message")
    g.add_argument("--adapter", type=Path, metavar="DIR", help="a PEFT LoRA adapter folder")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument(
        "--json-schema",
        type=Path,
        metavar="FILE",
        help="a JSON schema file the answer must satisfy",
    )
    g.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    g.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    messages = [ChatMessage(role="user", content=args.prompt)]
    if args.system:
        messages.insert(0, ChatMessage(role="system", content=args.system))
    schema = None
    if args.json_schema:
        try:
            schema = json.loads(args.json_schema.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"--json-schema {args.json_schema}: {exc}") from exc
    adapter = f"cli-{args.adapter.resolve().name}" if args.adapter else None
    try:
        request = GenerationRequest(
            messages=messages,
            adapter=adapter,
            sampling=SamplingParams(
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                seed=args.seed,
                stop=args.stop,
            ),
            json_schema=schema,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(err['loc'][-1]).replace('_', '-')}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidInput(problems) from exc
    return asyncio.run(_generate(settings, request, args.adapter, args.stream))


async def _generate(
    settings: Settings, request: GenerationRequest, adapter_dir: Path | None, stream: bool
) -> int:
    backend = build_backend(settings)
    try:
        if adapter_dir is not None and request.adapter is not None:
            await backend.load_adapter(request.adapter, adapter_dir.resolve())
        started = time.perf_counter()
        if stream:
            usage = None
            async for delta in backend.stream(request):
                print(delta.text, end="", flush=True)
                usage = delta.usage or usage
            print()
        else:
            completion = await backend.generate(request)
            print(completion.text)
            usage = completion.usage
        seconds = time.perf_counter() - started
        if usage is not None:
            print(
                f"[{backend.name}, {request.adapter or 'base model'}: {usage.prompt_tokens} "
                f"prompt + {usage.completion_tokens} completion tokens in {seconds:.1f}s, "
                f"{usage.completion_tokens / seconds:.1f} tokens/s]",
                file=sys.stderr,
            )
        if adapter_dir is not None and request.adapter is not None:
            await backend.unload_adapter(request.adapter)
    finally:
        await backend.aclose()
    return 0
