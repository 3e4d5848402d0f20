"""Limits on what a request may send, enforced while its body is read: its size (not only
from Content-Length), the time it takes to arrive (slow-loris clients) and how deeply its
JSON nests (Python's json parser recurses). The header block's limits belong to the HTTP
server: service/server.py."""

from __future__ import annotations

import asyncio
import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import CodedHTTPException, error_body

# Strings, terminated or not (an unterminated one runs to the end): brackets inside them
# do not nest. Unrolled (`[^"\\]*(?:\\.[^"\\]*)*`) so long strings are matched in C.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Depth does not care whether a level is an array or an object.
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_OPEN = ord("[")


class TooLarge(CodedHTTPException):
    """Raised while reading a body past the limit; the app's handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit), code="request_too_large")


class BodyTimeout(CodedHTTPException):
    """Raised when a body has not arrived in full in time; 408, and the connection is closed
    (what is still on its way would be read as the next request)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout_s:g} s (api.body_timeout_s); "
            "send it in one go",
            code="request_timeout",
            headers={"Connection": "close"},
        )


class TooDeep(CodedHTTPException):
    """Raised before a JSON body nested past the limit is parsed; 422, like invalid JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            422,
            f"the JSON body nests arrays and objects deeper than this server's limit of {limit} "
            "levels (api.max_json_depth); flatten it",
            code="json_too_deep",
        )


class NotText(CodedHTTPException):
    """Raised for a JSON body that escapes a lone UTF-16 surrogate (`\\ud800`): json.loads
    makes it a str that no encoder takes, which failed deep inside (tokenizer, Qdrant, the
    audit log) as a 500."""

    def __init__(self) -> None:
        super().__init__(
            422,
            "the JSON body escapes a lone UTF-16 surrogate (\\ud800-\\udfff without its pair), "
            "which is not text; send valid Unicode",
            code="invalid_unicode",
        )


def lone_surrogate(body: bytes) -> bool:
    """Whether the JSON text `body` decodes to a string with a lone surrogate; only bodies
    with escapes are parsed (twice, then: here and by FastAPI)."""
    if b"\\u" not in body:
        return False
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):  # not JSON: FastAPI's answer describes it
        return False
    return False


def _too_large(limit: int) -> str:
    return f"the request body is larger than this server's limit of {limit} bytes"


def nests_deeper(body: bytes, limit: int) -> bool:
    """Whether the JSON text `body` nests arrays and objects more than `limit` deep. Counts
    brackets outside strings; invalid JSON is left to the parser to describe."""
    if body.count(b"[") + body.count(b"{") <= limit:  # the usual body: no scan at all
        return False
    brackets = _STRING.sub(b"", body).translate(_ONE_KIND, _NOT_BRACKETS)
    # The innermost pairs, dropped in one pass (exactly one level), make a long flat list
    # cost nothing below; a deep one stops the loop at the limit. The costliest body, many
    # trees just under the limit, takes about as long to check as json.loads takes to parse.
    brackets = brackets.replace(b"[]", b"")
    depth = 1  # the dropped innermost pair
    for byte in brackets:
        if byte == _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class RequestLimits:
    """Answers 413 to bodies over `max_bytes` (paths in `exempt` have their own limit and are
    streamed, unchecked for JSON), 408 to bodies that take longer than `body_timeout_s` to
    arrive, and 422 to JSON bodies nested deeper than `max_json_depth`."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        body_timeout_s: float,
        max_json_depth: int,
        exempt: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.max_json_depth = max_json_depth
        self.exempt = exempt or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        own = next((v for p, v in self.exempt.items() if path.startswith(p)), None)
        limit = self.max_bytes if own is None else own
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _reject(send, TooLarge(limit))
            return
        # What FastAPI parses as JSON: a JSON content type, or none at all.
        content_type = headers.get(b"content-type", b"")
        parsed = own is None and (not content_type or b"json" in content_type)
        json_depth = self.max_json_depth if parsed else None
        has_body = (length is not None and length != b"0") or b"transfer-encoding" in headers
        seen = 0
        pieces: list[bytes] = []
        deadline: float | None = None
        body_done = not has_body
        started = False

        async def limited() -> Message:
            nonlocal seen, deadline, body_done
            if body_done:  # the body is in; what follows is the wait for a disconnect
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.body_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] != "http.request":
                body_done = True
                return message
            piece: bytes = message.get("body", b"")
            seen += len(piece)
            if seen > limit:
                raise TooLarge(limit)
            more = message.get("more_body", False)
            if json_depth is not None:
                if more:
                    pieces.append(piece)
                else:
                    body = b"".join([*pieces, piece]) if pieces else piece
                    if nests_deeper(body, json_depth):
                        raise TooDeep(json_depth)
                    if lone_surrogate(body):
                        raise NotText()
            body_done = not more
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_done:
                    # Answered before the body was read (a refused key): what is still on its
                    # way is not waited for, however slowly it comes.
                    message = {
                        **message,
                        "headers": [*message.get("headers", []), (b"connection", b"close")],
                    }
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except (TooLarge, BodyTimeout, TooDeep, NotText) as exc:
            # Raised where no exception handler runs (before routing); otherwise the app's
            # handler has answered already.
            if not started:
                await _reject(send, exc)


async def _reject(send: Send, exc: CodedHTTPException) -> None:
    """Answer without reading the body: the connection is closed rather than left to wait
    for the rest of it."""
    body = json.dumps(error_body(str(exc.detail), "invalid_request_error", code=exc.code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
