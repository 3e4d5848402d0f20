"""OpenAI-compatible endpoints: POST /v1/chat/completions and GET /v1/models."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request

from service.auth import ApiKeyRoute
from service.deps import ChatDep, RoutesDep, SettingsDep
from service.openai_api import service
from service.openai_api.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ModelList,
)
from service.openapi import BODY, UPSTREAM, StreamError, errors, event_stream
from service.sse import sse_response

# Behind the API keys when api.keys is set.
router = APIRouter(tags=["openai"], route_class=ApiKeyRoute)
_STARTED = int(time.time())


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        **event_stream(
            "With `stream`: chat.completion.chunk events as OpenAI sends them, or an error "
            "if answering failed after the 200 was sent.",
            ChatCompletionChunk,
            StreamError,
        ),
        **errors(401, 404, 409, *BODY, *UPSTREAM),
    },
)
async def chat_completions(body: ChatCompletionRequest, chat: ChatDep, request: Request) -> Any:
    request.state.route_label = body.model
    call = service.to_call(body)
    call.capture = True  # callers' traffic (a route with `capture` records it)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = await chat.open_stream(call)
        return sse_response(service.chunks(events, body.model, include_usage))
    return service.completion(await chat.answer(call))


@router.get("/v1/models", response_model=ModelList, responses=errors(401))
async def models(routes: RoutesDep, settings: SettingsDep) -> ModelList:
    base = await asyncio.to_thread(service.base_model_info, settings)
    return service.list_models(routes, _STARTED, base)
