"""Server-sent events: the response type and the framing shared by the streaming endpoints."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from service.errors import describe

DONE = "data: [DONE]\n\n"


def event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def with_errors(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Once streaming has begun the status is sent; an error becomes a last `error` event
    (vLLM's and OpenAI's convention) followed by [DONE]."""
    try:
        async for chunk in events:
            yield chunk
    except Exception as exc:
        status, body = describe(exc)
        body["error"]["status"] = status
        yield event(body)
        yield DONE


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        with_errors(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
