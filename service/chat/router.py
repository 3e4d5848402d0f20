"""POST /v1/chat: an answer from the route's sources, in the route's voice, with citations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from service.auth import ApiKeyRoute
from service.chat.schemas import (
    ChatDryRun,
    ChatRequest,
    ChatResponse,
    RetrievalQueryOut,
    StreamEvent,
    UsageOut,
    citations_out,
    sources_out,
)
from service.chat.service import (
    ChatCall,
    ChatEvent,
    ChatResult,
    ChatService,
    DeltaEvent,
    SourcesEvent,
)
from service.deps import ChatDep
from service.openapi import BODY, UPSTREAM, errors, event_stream
from service.sse import sse_response

# Behind the API keys when api.keys is set.
router = APIRouter(tags=["chat"], route_class=ApiKeyRoute)


@router.post(
    "/v1/chat",
    response_model=ChatResponse | ChatDryRun,
    responses={
        **event_stream(
            "With `stream`: the sources, the answer's pieces (delta), then done, or error "
            "if answering failed after the 200 was sent.",
            StreamEvent,
        ),
        **errors(401, 404, 409, *BODY, *UPSTREAM),
    },
)
async def chat(body: ChatRequest, service: ChatDep, request: Request) -> Any:
    request.state.route_label = body.route
    call = to_call(body)
    call.capture = True  # callers' traffic (a route with `capture` records it)
    if body.dry_run:
        return await dry_run(call, service)
    texts = body.include_source_text
    if body.stream:
        # Prepared before the 200 goes out, so a bad request is still an HTTP error.
        events = _events(await service.open_stream(call), texts)
        return sse_response(events, on_error=_error_event)
    return to_response(await service.answer(call), texts)


async def dry_run(call: ChatCall, service: ChatService) -> ChatDryRun:
    checked = await service.dry_run(call)
    return ChatDryRun(
        route=checked.route,
        adapter_alias=checked.alias,
        adapter=checked.version,
        retrieves=checked.spec.retrieval is not None,
        sampling=checked.sampling.model_dump(mode="json"),
    )


def to_call(body: ChatRequest) -> ChatCall:
    return ChatCall(
        route=body.route,
        messages=body.messages,
        filters=body.filters,
        top_k=body.top_k,
        mode=body.mode,
        adapter=body.adapter,
        sampling=body.generation(),
    )


def to_response(result: ChatResult, source_text: bool = False) -> ChatResponse:
    return ChatResponse(
        id=result.id,
        route=result.route,
        adapter=result.adapter,
        answer=result.text,
        output=result.output,
        output_error=result.output_error,
        finish_reason=result.finish_reason,
        sources=sources_out(result.sources, source_text),
        citations=citations_out(result.citations),
        usage=UsageOut.of(result.usage),
        retrieval_query=RetrievalQueryOut.of(result.query),
    )


def _error_event(error: dict[str, Any]) -> dict[str, Any]:
    """The stream's last event when answering failed after the 200 was sent."""
    return StreamEvent(type="error", error=error).model_dump(exclude_none=True)


async def _events(
    events: AsyncIterator[ChatEvent], source_text: bool
) -> AsyncIterator[dict[str, Any]]:
    """Sources first, then the answer's pieces, then done (citations, usage, output)."""
    async for item in events:
        out: StreamEvent
        if isinstance(item, SourcesEvent):
            out = StreamEvent(
                type="sources",
                id=item.id,
                route=item.route,
                adapter=item.adapter,
                sources=sources_out(item.sources, source_text),
            )
        elif isinstance(item, DeltaEvent):
            out = StreamEvent(type="delta", text=item.text)
        else:
            out = StreamEvent(
                type="done",
                id=item.id,
                finish_reason=item.finish_reason,
                citations=citations_out(item.citations),
                usage=UsageOut.of(item.usage),
                output=item.output,
                output_error=item.output_error,
                retrieval_query=RetrievalQueryOut.of(item.query),
            )
        yield out.model_dump(exclude_none=True)
