"""OpenAI chat completions on top of ragtune's chat service: `model` names a route."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from engine.model import resolve_base_model
from engine.types import ChatMessage
from ragtune.errors import InvalidInput, RagtuneError
from ragtune.settings import Settings
from service.chat.schemas import RetrievalQueryOut, citations_out, sources_out
from service.chat.service import ChatCall, ChatResult, DeltaEvent, SourcesEvent
from service.openai_api.schemas import (
    BaseModelInfo,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    CompletionUsage,
    Model,
    ModelList,
    ModelsExtra,
    OpenAIMessage,
    RagtuneExtra,
    ResponseMessage,
    RouteInfo,
)
from service.routes.schemas import RouteSpec


def to_call(body: ChatCompletionRequest) -> ChatCall:
    """Refuse what cannot be honoured (n > 1, tools, another response format), map the rest."""
    if body.n not in (None, 1):
        raise InvalidInput("n: only n=1 is supported; send several requests instead")
    if body.tools:
        raise InvalidInput("tools: tool calling is not supported by ragtune routes")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise InvalidInput(
            "response_format: the output format is part of the route; pick a route whose "
            "output is JSON (GET /v1/models) instead"
        )
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise InvalidInput("max_tokens and max_completion_tokens: send one of them")
    sampling = body.generation()
    sampling["max_tokens"] = body.max_completion_tokens or body.max_tokens
    if isinstance(body.stop, str):
        sampling["stop"] = [body.stop]
    return ChatCall(
        route=body.model,
        messages=[_message(i, m) for i, m in enumerate(body.messages)],
        filters=body.filters,
        top_k=body.top_k,
        mode=body.mode,
        adapter=body.adapter,
        sampling=sampling,
    )


def _message(index: int, message: OpenAIMessage) -> ChatMessage:
    role = "system" if message.role == "developer" else message.role
    if role not in ("system", "user", "assistant"):
        raise InvalidInput(f"messages.{index}.role: {message.role!r} messages are not supported")
    content = message.content
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise InvalidInput(
                    f"messages.{index}.content: only text parts are supported, not {part.type!r}"
                )
            parts.append(part.text)
        content = "".join(parts)
    return ChatMessage(role=role, content=content or "")


def list_models(routes: Mapping[str, RouteSpec], created: int, base: BaseModelInfo) -> ModelList:
    """The chat routes, as OpenAI models, with ragtune's extension: each route's fingerprint
    and rules, and the base model."""
    return ModelList(
        data=[
            Model(
                id=name,
                created=created,
                description=spec.description,
                kind=spec.kind,
                ragtune=route_info(spec),
            )
            for name, spec in sorted(routes.items())
            if spec.kind == "chat"
        ],
        ragtune=ModelsExtra(base_model=base),
    )


def route_info(spec: RouteSpec) -> RouteInfo:
    dumped = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    return RouteInfo(
        fingerprint=hashlib.sha256(dumped.encode()).hexdigest(),
        kind=spec.kind,
        retrieves=spec.retrieval is not None,
        output=spec.output.type,
        adapter=spec.adapter,
        overrides=spec.overrides,
    )


def base_model_info(settings: Settings) -> BaseModelInfo:
    """The served base model's identity (reads its config.json: call it off the event loop)."""
    llm = settings.llm
    try:
        folder: Path | None = Path(resolve_base_model(settings))
    except RagtuneError:
        folder = None  # a vLLM server's model, not on this host
    config = folder / "config.json" if folder is not None else None
    digest = None
    if config is not None and config.is_file():
        digest = hashlib.sha256(config.read_bytes()).hexdigest()
    return BaseModelInfo(
        name=folder.name if folder is not None else (llm.model or llm.served_model_name),
        config_sha256=digest,
        backend="vllm" if llm.use_vllm() else "embedded",
        dtype=llm.dtype,
    )


def _extra(result: ChatResult) -> RagtuneExtra:
    return RagtuneExtra(
        route=result.route,
        adapter=result.adapter,
        sources=[s.model_dump() for s in sources_out(result.sources)],
        citations=citations_out(result.citations).model_dump(),
        output=result.output,
        output_error=result.output_error,
        retrieval_query=(
            query.model_dump() if (query := RetrievalQueryOut.of(result.query)) else None
        ),
    )


def completion(result: ChatResult) -> ChatCompletion:
    return ChatCompletion(
        id=result.id,
        created=int(time.time()),
        model=result.route,
        choices=[
            Choice(message=ResponseMessage(content=result.text), finish_reason=result.finish_reason)
        ],
        usage=CompletionUsage.of(result.usage),
        ragtune=_extra(result),
    )


async def chunks(
    events: AsyncIterator[DeltaEvent | SourcesEvent | ChatResult], model: str, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    """OpenAI's chat.completion.chunk stream: a role chunk, content chunks, a chunk with the
    finish reason (and ragtune's sources, citations and output), the usage chunk if asked
    (service/sse.py adds the [DONE]). Every chunk carries the answer's id (the sources
    event, which comes first, has it)."""
    base: dict[str, Any] = {
        "id": "",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    async for item in events:
        if isinstance(item, SourcesEvent):
            base["id"] = item.id
            yield chunk({"role": "assistant", "content": ""})
        elif isinstance(item, DeltaEvent):
            yield chunk({"content": item.text})
        else:
            yield chunk({}, item.finish_reason, ragtune=_extra(item).model_dump())
            if include_usage:
                yield {**base, "choices": [], "usage": CompletionUsage.of(item.usage).model_dump()}
