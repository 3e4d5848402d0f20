"""`ragtune generate`: one chat turn against the configured backend, with or without an adapter."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from engine.factory import build_backend
from engine.types import ChatMessage, GenerationRequest, SamplingParams
from ragtune.errors import InvalidInput
from ragtune.settings import Settings


def commands() -> typer.Typer:
    """`generate`."""
    app = typer.Typer()
    app.command("generate", no_args_is_help=True, rich_help_panel="Model")(generate)
    return app


def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="the user message")],
    system: Annotated[str | None, typer.Option(help="a system message")] = None,
    adapter: Annotated[
        Path | None, typer.Option(metavar="DIR", help="a PEFT LoRA adapter folder")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="most tokens to generate")] = 128,
    temperature: Annotated[float, typer.Option(help="0 is greedy")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="sampling seed")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    json_schema: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="a JSON schema file the answer must satisfy"),
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="print the answer as it is generated")
    ] = False,
) -> int:
    """Answer a prompt with the base model or a LoRA adapter.

    On the embedded engine, or on vLLM when RAGTUNE_LLM__VLLM_URL is set.
    """
    settings = Settings()
    messages = [ChatMessage(role="user", content=prompt)]
    if system:
        messages.insert(0, ChatMessage(role="system", content=system))
    schema = None
    if json_schema:
        try:
            schema = json.loads(json_schema.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"--json-schema {json_schema}: {exc}") from exc
    name = f"cli-{adapter.resolve().name}" if adapter else None
    try:
        request = GenerationRequest(
            messages=messages,
            adapter=name,
            sampling=SamplingParams(
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                stop=stop or [],
            ),
            json_schema=schema,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(err['loc'][-1]).replace('_', '-')}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidInput(problems) from exc
    return asyncio.run(_generate(settings, request, adapter, stream))


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
