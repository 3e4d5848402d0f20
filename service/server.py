"""uvicorn as `ragtune serve` runs it: the limits on what reaches the app (the header block's
size and the time it takes to arrive, which uvicorn's httptools protocol does not bound), and
a shutdown that drains requests in flight on SIGTERM and exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn
from sse_starlette.sse import AppStatus
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ragtune.settings import ApiSettings
from service.errors import error_body

LogLevel = Literal["debug", "info", "warning", "error"]
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
# After a refusal, how long what the client still sends is read and dropped before the
# connection closes: closing on unread data resets it, and the client may lose the answer.
LINGER_S = 2.0


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the protocol answers with its refusal."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks: a request line and header block
    over `max_header_bytes` gets 431 (httptools reads any size: a 20 MB header whole), and
    one that has not arrived `header_timeout_s` after it began (or after the connection
    opened) gets 408; both close the connection. Its own parse errors are answered in the
    app's JSON error shape."""

    max_header_bytes = 16_384
    header_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_bytes = 0  # received since the request began, while its headers are due
        self._header_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str, str] | None = None
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing is held no longer than a slow one

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
            if self._header_timer is None:
                self._arm()
        super().data_received(data)
        # Still incomplete: stop reading a header block that is already too large, rather
        # than wait for its end (checked exactly once it is complete).
        if (
            self._awaiting_headers
            and self._header_bytes > self.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse(*self._too_large())

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._disarm()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.max_header_bytes:
            self._refusal = self._too_large()
            raise _Refused  # httptools stops; uvicorn answers through send_400_response
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True
        self._header_bytes = 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools refused: the refusal this class raised, or
        a parse error, in the app's error shape."""
        refusal, self._refusal = self._refusal, None
        self._refuse(
            *(
                refusal
                or (
                    400,
                    "the request is not valid HTTP/1.1 (a malformed request line, header or "
                    "chunked body); send a well-formed request",
                    "invalid_http",
                )
            )
        )

    def _too_large(self) -> tuple[int, str, str]:
        return (
            431,
            "the request line and headers are larger than this server's limit of "
            f"{self.max_header_bytes} bytes (api.max_header_bytes); send fewer or shorter headers",
            "request_header_fields_too_large",
        )

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # an answer is being written: the next request's turn comes after
            return
        if not self._header_bytes:
            self.transport.close()  # never sent a byte: nothing to answer
            return
        self._refuse(
            408,
            f"the request headers did not arrive within {self.header_timeout_s:g} s "
            "(api.body_timeout_s); send the request in one go",
            "request_timeout",
        )

    def _refuse(self, status: int, message: str, code: str) -> None:
        body = json.dumps(error_body(message, "invalid_request_error", code=code)).encode()
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
        )
        self.transport.write(head + body)
        self._disarm()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the client's end of it closes the connection (asyncio)
        self._lingering = True
        self.transport.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)


def limited_protocol(api: ApiSettings) -> type[LimitedHttpProtocol]:
    """The protocol class with `api`'s limits (uvicorn builds one per connection)."""
    return type(
        "LimitedHttpProtocol",
        (LimitedHttpProtocol,),
        {"max_header_bytes": api.max_header_bytes, "header_timeout_s": api.body_timeout_s},
    )


def server_config(app: Any, api: ApiSettings, log_level: LogLevel = "info") -> uvicorn.Config:
    """uvicorn's configuration for `app` under `api`'s address and limits."""
    return uvicorn.Config(
        app,
        host=api.host,
        port=api.port,
        log_level=log_level,
        http=limited_protocol(api),
        # On SIGTERM: stop accepting, let requests and streams in flight finish up to this,
        # then run the lifespan's shutdown (which writes what was captured).
        timeout_graceful_shutdown=api.shutdown_timeout_s,
    )


class Server(uvicorn.Server):
    """Drains streams on shutdown; prints `banner` once the app is started (the model and
    clients are loaded)."""

    def __init__(self, config: uvicorn.Config, banner: str = "") -> None:
        super().__init__(config)
        self.banner = banner
        # sse-starlette ends every stream the moment uvicorn is told to exit (it patches
        # uvicorn's signal handler): that cuts answers a drain should let finish. uvicorn
        # still cancels whatever outlives timeout_graceful_shutdown.
        AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.banner:
            print(self.banner, flush=True)


@contextmanager
def sigterm_drains(server: uvicorn.Server) -> Iterator[None]:
    """Makes SIGTERM end the process with 0 once `server` has drained. uvicorn answers the
    signal by draining, then raises it again for the handler that was there before; the
    default one would kill the process (exit -15) after a clean shutdown. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        # Before uvicorn's handler is in place this starts the shutdown; after it, it is the
        # re-raised signal of a shutdown that is over.
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
