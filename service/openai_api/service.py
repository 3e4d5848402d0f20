"""OpenAI chat completions on top of ragtune's chat service: `model` names a route."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from engine.types import ChatMessage
from ragtune.errors import InvalidInput
from service.chat.schemas import citations_out, sources_out
from service.chat.service import ChatCall, ChatResult, DeltaEvent, SourcesEvent
from service.openai_api.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    CompletionUsage,
    Model,
    ModelList,
    OpenAIMessage,
    RagtuneExtra,
    ResponseMessage,
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


def list_models(routes: Mapping[str, RouteSpec], created: int) -> ModelList:
    """The chat routes, as OpenAI models."""
    return ModelList(
        data=[
            Model(id=name, created=created, description=spec.description, kind=spec.kind)
            for name, spec in sorted(routes.items())
            if spec.kind == "chat"
        ]
    )


def _extra(result: ChatResult) -> RagtuneExtra:
    return RagtuneExtra(
        route=result.route,
        adapter=result.adapter,
        sources=[s.model_dump() for s in sources_out(result.sources)],
        citations=citations_out(result.citations).model_dump(),
        output=result.output,
        output_error=result.output_error,
    )


def completion(result: ChatResult) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
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
    (service/sse.py adds the [DONE])."""
    base: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    async for item in events:
        if isinstance(item, SourcesEvent):
            yield chunk({"role": "assistant", "content": ""})
        elif isinstance(item, DeltaEvent):
            yield chunk({"content": item.text})
        else:
            yield chunk({}, item.finish_reason, ragtune=_extra(item).model_dump())
            if include_usage:
                yield {**base, "choices": [], "usage": CompletionUsage.of(item.usage).model_dump()}
