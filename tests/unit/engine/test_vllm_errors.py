"""VLLMBackend at the HTTP boundary: failures a live server cannot easily be made to produce.

A real local HTTP server (aiohttp.web on 127.0.0.1) plays vLLM's part, so the client's
sockets, timeouts and connection pool are the real ones. The mapping of what a live server
does produce (404s, rank errors) is checked against real vLLM in
tests/integration/engine/test_vllm_backend.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from engine.types import ChatMessage, GenerationRequest, StreamDelta
from engine.vllm import VLLMBackend
from ragtune.errors import InvalidInput, UpstreamUnavailable
from ragtune.settings import LLMSettings

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST = GenerationRequest(messages=[ChatMessage(role="user", content="hi")])
# Small enough to keep the timeout tests quick, large enough for a loaded machine to connect.
SHORT_TIMEOUT_S = 0.3


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Stub:
    """Plays vLLM: records each request, then answers it with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Seen] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen(request.method, request.path, dict(request.headers), body))
        return await self.handler(request)


class Attempts:
    """Counts the connections the backend tries to open (an aiohttp trace hook)."""

    def __init__(self) -> None:
        self.count = 0
        self.config = aiohttp.TraceConfig()
        self.config.on_connection_create_start.append(self._started)

    async def _started(self, session: object, context: SimpleNamespace, params: object) -> None:
        self.count += 1


@asynccontextmanager
async def serving(stub: Stub, port: int = 0) -> AsyncIterator[str]:
    """`stub` on 127.0.0.1:`port` (a free one by default); yields its URL."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", stub.handle)
    # Handlers are cancelled when the client goes away, and shutdown does not wait for them.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def using(
    url: str,
    body: Callable[[VLLMBackend], Awaitable[T]],
    attempts: Attempts | None = None,
    **settings: Any,
) -> T:
    backend = VLLMBackend(
        LLMSettings(vllm_url=url, **settings),
        retry_backoff_s=0.0,
        trace_configs=[attempts.config] if attempts else [],
    )
    try:
        return await body(backend)
    finally:
        await backend.aclose()


def run(stub: Stub | Handler, body: Callable[[VLLMBackend], Awaitable[T]], **settings: Any) -> T:
    """`body` against a backend talking to `stub` on a free local port."""
    stub = stub if isinstance(stub, Stub) else Stub(stub)

    async def main() -> T:
        async with serving(stub) as url:
            return await using(url, body, **settings)

    return asyncio.run(main())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def collect(backend: VLLMBackend) -> list[StreamDelta]:
    return [delta async for delta in backend.stream(REQUEST)]


OPERATIONS: dict[str, Callable[[VLLMBackend], Awaitable[object]]] = {
    "health": lambda b: b.health(),
    "generate": lambda b: b.generate(REQUEST),
    "stream": collect,
    "list_adapters": lambda b: b.list_adapters(),
    "unload_adapter": lambda b: b.unload_adapter("alpha"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("retries", [0, 2])
def test_a_closed_port_is_retried_then_unavailable(operation: str, retries: int) -> None:
    # Nothing listens on the port: each attempt gets a real "connection refused".
    url = f"http://127.0.0.1:{closed_port()}"
    attempts = Attempts()
    with pytest.raises(UpstreamUnavailable, match=f"cannot connect to vLLM at {url} after"):
        asyncio.run(using(url, OPERATIONS[operation], attempts, connect_retries=retries))
    assert attempts.count == retries + 1


def test_retries_back_off_exponentially_and_name_the_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The waits are recorded, not timed: asyncio.sleep is wrapped to log each delay.
    waits: list[float] = []
    sleep = asyncio.sleep

    async def logged(delay: float, result: Any = None) -> Any:
        if delay > 0:
            waits.append(delay)
        return await sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", logged)
    url = f"http://127.0.0.1:{closed_port()}"
    attempts = Attempts()

    async def main() -> None:
        backend = VLLMBackend(
            LLMSettings(vllm_url=url, connect_retries=3),
            retry_backoff_s=0.25,
            trace_configs=[attempts.config],
        )
        try:
            await backend.health()
        finally:
            await backend.aclose()

    with pytest.raises(UpstreamUnavailable) as caught:
        asyncio.run(main())
    assert waits == [0.25, 0.5, 1.0]
    assert attempts.count == 4
    assert str(caught.value).startswith(
        f"cannot connect to vLLM at {url} after 4 attempts (ClientConnectorError("
    )
    assert str(caught.value).endswith(
        "start it (`ragtune vllm serve` runs vLLM-CPU) or fix llm.vllm_url"
    )


def test_a_connect_timeout_is_retried_too() -> None:
    # A listening socket whose accept queue is full: Linux drops further SYNs, so a connect
    # hangs until the connect timeout (min(timeout_s, 10 s)).
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued.connect(listener.getsockname())
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        attempts = Attempts()
        with pytest.raises(UpstreamUnavailable, match=r"after 2 attempts .*ConnectionTimeout"):
            asyncio.run(
                using(url, lambda b: b.health(), attempts, connect_retries=1, timeout_s=0.2)
            )
    assert attempts.count == 2


def test_a_server_that_comes_up_during_the_retries_answers() -> None:
    port = closed_port()
    stub = Stub(lambda r: ok())
    attempts = Attempts()

    async def main() -> None:
        url = f"http://127.0.0.1:{port}"
        backend = VLLMBackend(
            LLMSettings(vllm_url=url, connect_retries=3),
            retry_backoff_s=0.4,
            trace_configs=[attempts.config],
        )
        try:
            # The first attempt is refused at once; the server is up long before the second.
            checked = asyncio.create_task(backend.health())
            await asyncio.sleep(0.2)
            async with serving(stub, port):
                await checked
        finally:
            await backend.aclose()

    asyncio.run(main())
    assert attempts.count == 2
    assert [r.path for r in stub.requests] == ["/health"]


async def ok() -> web.Response:
    return web.Response()


async def too_slow(request: web.Request) -> web.Response:
    await asyncio.sleep(10 * SHORT_TIMEOUT_S)
    return web.Response()


@pytest.mark.parametrize("operation", ["generate", "stream"])
def test_a_timeout_after_connecting_is_not_retried(operation: str) -> None:
    stub = Stub(too_slow)
    with pytest.raises(UpstreamUnavailable, match="did not answer POST /v1/chat/completions"):
        run(stub, OPERATIONS[operation], connect_retries=3, timeout_s=SHORT_TIMEOUT_S)
    assert len(stub.requests) == 1


async def hang_up(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(10)  # cancelled: the connection is gone
    return web.Response()


@pytest.mark.parametrize("operation", ["generate", "stream", "unload_adapter"])
def test_a_dropped_connection_is_not_retried(operation: str) -> None:
    stub = Stub(hang_up)
    with pytest.raises(UpstreamUnavailable, match=r"failed during POST .* still running"):
        run(stub, OPERATIONS[operation], connect_retries=3)
    assert len(stub.requests) == 1


def test_a_get_on_a_dropped_connection_is_sent_once_more_then_unavailable() -> None:
    # aiohttp resends an idempotent request once when its connection drops (RFC 9112 9.3.1,
    # meant for keep-alive connections the server closed); a GET changes nothing on vLLM.
    stub = Stub(hang_up)
    with pytest.raises(UpstreamUnavailable, match=r"failed during GET /v1/models .* still"):
        run(stub, lambda b: b.list_adapters(), connect_retries=3)
    assert len(stub.requests) == 2


async def dead_engine(request: web.Request) -> web.Response:
    message = "EngineCore encountered an issue. See stack trace for the root cause."
    error = {"message": message, "type": "InternalServerError", "param": None, "code": 500}
    return web.json_response({"error": error}, status=500)


@pytest.mark.parametrize("operation", ["generate", "stream", "unload_adapter"])
def test_a_dead_engine_is_unavailable_not_retried(operation: str) -> None:
    stub = Stub(dead_engine)
    with pytest.raises(
        UpstreamUnavailable, match=r"vLLM at http://127\.0\.0\.1:\d+ failed .*restart vLLM"
    ):
        run(stub, OPERATIONS[operation], connect_retries=3)
    assert len(stub.requests) == 1


def test_a_dead_engine_while_loading_is_unavailable_not_an_adapter_error(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return web.json_response({"data": []})
        return await dead_engine(request)

    with pytest.raises(UpstreamUnavailable, match="restart vLLM"):
        run(handler, lambda b: b.load_adapter("a", tmp_path / "remote"))


def test_unhealthy_is_unavailable() -> None:
    async def unhealthy(request: web.Request) -> web.Response:
        return web.Response(status=503)

    with pytest.raises(UpstreamUnavailable, match="GET /health answered 503"):
        run(unhealthy, lambda b: b.health())


def test_a_bad_request_is_invalid_input_with_vllms_message() -> None:
    async def too_long(request: web.Request) -> web.Response:
        message = "This model's maximum context length is 2048 tokens."
        return web.json_response({"error": {"message": message, "code": 400}}, status=400)

    with pytest.raises(InvalidInput, match="maximum context length is 2048"):
        run(too_long, lambda b: b.generate(REQUEST))


def test_a_plain_text_error_is_quoted_and_an_empty_one_named_by_its_reason() -> None:
    async def plain(request: web.Request) -> web.Response:
        if request.path == "/v1/chat/completions":
            return web.Response(status=422, text="  bad sampling parameters \n")
        return web.Response(status=409)

    with pytest.raises(InvalidInput, match=r"\(422\): bad sampling parameters$"):
        run(plain, lambda b: b.generate(REQUEST))
    with pytest.raises(InvalidInput, match=r"\(409\): Conflict$"):
        run(plain, lambda b: b.unload_adapter("alpha"))


def test_an_answer_that_is_not_json_is_unavailable() -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy login</html>", content_type="text/html")

    with pytest.raises(UpstreamUnavailable, match="something other than JSON"):
        run(html, lambda b: b.generate(REQUEST))


def events(*items: object) -> bytes:
    return "".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in items
    ).encode()


def sse(*items: object) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=events(*items), content_type="text/event-stream")

    return handler


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
ANSWER = (chunk("Hi"), chunk("", finish="abort"), USAGE, "[DONE]")


def test_a_stream_that_ends_early_is_unavailable() -> None:
    # The engine died mid-answer: no finish_reason, no usage, no [DONE].
    with pytest.raises(UpstreamUnavailable, match="ended the stream before finishing"):
        run(sse(chunk("Hel"), chunk("lo")), collect)


@pytest.mark.parametrize("how", ["dropped", "stalled"])
def test_a_stream_whose_connection_breaks_midway_is_unavailable(how: str) -> None:
    async def breaks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(events(chunk("Hel")))
        if how == "dropped":
            assert request.transport is not None
            request.transport.close()
        await asyncio.sleep(10 * SHORT_TIMEOUT_S)
        return response

    stub = Stub(breaks)
    with pytest.raises(UpstreamUnavailable, match=r"stream from vLLM at .* broke off"):
        run(stub, collect, connect_retries=3, timeout_s=SHORT_TIMEOUT_S)
    assert len(stub.requests) == 1


def test_a_consumer_that_stops_early_lets_the_connection_go() -> None:
    gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(events(chunk("la")))
                await asyncio.sleep(0.01)
        finally:
            gone.set()

    async def first_then_stop(backend: VLLMBackend) -> StreamDelta:
        deltas = backend.stream(REQUEST)
        first = await anext(deltas)
        await deltas.aclose()  # type: ignore[attr-defined]
        # The server sees the connection close, not a client that went quiet.
        await asyncio.wait_for(gone.wait(), timeout=2.0)
        return first

    assert run(endless, first_then_stop).text == "la"


def test_a_long_stream_event_is_read_whole() -> None:
    text = "x" * 1_200_000  # above aiohttp's line limit (twice its read buffer: 512 KiB)
    deltas = run(sse(chunk(text), chunk("", finish="length"), USAGE, "[DONE]"), collect)
    assert [d.text for d in deltas] == [text, ""]
    assert deltas[-1].finish_reason == "length"


def test_an_error_event_in_the_stream_is_raised() -> None:
    error = {"error": {"message": "EngineCore encountered an issue.", "code": 500}}
    with pytest.raises(UpstreamUnavailable, match="restart vLLM"):
        run(sse(chunk("Hel"), error, "[DONE]"), collect)


def test_an_unusual_finish_reason_maps_to_stop() -> None:
    deltas = run(sse(*ANSWER), collect)
    assert [d.text for d in deltas] == ["Hi", ""]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 2


def test_a_lost_race_to_load_the_same_folder_is_not_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "alpha"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    loaded = {"id": "alpha", "root": str(folder), "parent": "base"}

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            # Absent at our first look, present once another caller's load went through.
            models = [loaded] if len(stub.requests) > 1 else []
            return web.json_response({"data": models})
        message = "The lora adapter 'alpha' has already been loaded."
        return web.json_response({"error": {"message": message, "code": 400}}, status=400)

    stub = Stub(handler)
    run(stub, lambda b: b.load_adapter("alpha", folder))
    paths = [r.path for r in stub.requests]
    assert paths == ["/v1/models", "/v1/load_lora_adapter", "/v1/models"]
    assert stub.requests[1].headers["Content-Type"] == "application/json"
    assert json.loads(stub.requests[1].body) == {"lora_name": "alpha", "lora_path": str(folder)}


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    stub = Stub(lambda r: ok())
    run(stub, lambda b: b.health(), api_key="s3cret-key")
    assert stub.requests[0].headers["Authorization"] == "Bearer s3cret-key"


def test_a_refused_api_key_says_which_setting_to_fix() -> None:
    async def unauthorized(request: web.Request) -> web.Response:
        return web.json_response({"error": "Unauthorized"}, status=401)

    with pytest.raises(UpstreamUnavailable, match=r"set llm\.api_key"):
        run(unauthorized, lambda b: b.generate(REQUEST))
