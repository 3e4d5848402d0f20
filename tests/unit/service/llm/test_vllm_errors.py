"""VLLMBackend at the HTTP boundary: failures a live server cannot easily be made to produce.

The mapping of what a live server does produce (404s, rank errors) is checked against real
vLLM in tests/integration/service/llm/test_vllm_backend.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from ragtune.errors import InvalidInput, UpstreamUnavailable
from ragtune.settings import LLMSettings
from service.llm.types import ChatMessage, GenerationRequest, StreamDelta
from service.llm.vllm import VLLMBackend

URL = "http://vllm.test:8000"
T = TypeVar("T")
Handler = Callable[[httpx.Request], httpx.Response]
REQUEST = GenerationRequest(messages=[ChatMessage(role="user", content="hi")])


class Recorder:
    """A MockTransport handler that records requests and answers with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def run(
    transport: httpx.AsyncBaseTransport,
    body: Callable[[VLLMBackend], Awaitable[T]],
    url: str = URL,
    **settings: Any,
) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(base_url=url, transport=transport) as client:
            backend = VLLMBackend(
                LLMSettings(vllm_url=url, **settings), client=client, retry_backoff_s=0.0
            )
            return await body(backend)

    return asyncio.run(main())


async def collect(backend: VLLMBackend) -> list[StreamDelta]:
    return [delta async for delta in backend.stream(REQUEST)]


OPERATIONS: dict[str, Callable[[VLLMBackend], Awaitable[object]]] = {
    "health": lambda b: b.health(),
    "generate": lambda b: b.generate(REQUEST),
    "stream": collect,
    "list_adapters": lambda b: b.list_adapters(),
    "unload_adapter": lambda b: b.unload_adapter("alpha"),
}


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("retries", [0, 2])
def test_connection_refused_is_retried_then_unavailable(operation: str, retries: int) -> None:
    recorder = Recorder(refuse)
    with pytest.raises(UpstreamUnavailable, match=f"cannot connect to vLLM at {URL}"):
        run(httpx.MockTransport(recorder), OPERATIONS[operation], connect_retries=retries)
    assert len(recorder.requests) == retries + 1


def test_a_connect_timeout_is_retried_too() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    recorder = Recorder(slow)
    with pytest.raises(UpstreamUnavailable, match="after 4 attempts"):
        run(httpx.MockTransport(recorder), lambda b: b.health(), connect_retries=3)
    assert len(recorder.requests) == 4


def test_a_server_that_comes_up_during_the_retries_answers() -> None:
    def flaky(request: httpx.Request) -> httpx.Response:
        if len(recorder.requests) < 3:
            refuse(request)
        return httpx.Response(200)

    recorder = Recorder(flaky)
    run(httpx.MockTransport(recorder), lambda b: b.health(), connect_retries=3)
    assert len(recorder.requests) == 3


class CountingTransport(httpx.AsyncHTTPTransport):
    """The real transport, counting attempts."""

    attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        return await super().handle_async_request(request)


def test_a_closed_port_is_retried_then_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on `port` now: the real transport gets a real "connection refused".
    url = f"http://127.0.0.1:{port}"
    transport = CountingTransport()
    with pytest.raises(UpstreamUnavailable, match=f"cannot connect to vLLM at {url}"):
        run(transport, lambda b: b.generate(REQUEST), url=url, connect_retries=2)
    assert transport.attempts == 3


@pytest.mark.parametrize(
    "timeout", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout], ids=lambda t: t.__name__
)
@pytest.mark.parametrize("operation", ["generate", "stream"])
def test_a_timeout_after_connecting_is_not_retried(
    timeout: type[httpx.TimeoutException], operation: str
) -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise timeout("timed out", request=request)

    recorder = Recorder(hang)
    with pytest.raises(UpstreamUnavailable, match="did not answer POST /v1/chat/completions"):
        run(httpx.MockTransport(recorder), OPERATIONS[operation], connect_retries=3)
    assert len(recorder.requests) == 1


def test_a_dropped_connection_is_not_retried() -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected", request=request)

    recorder = Recorder(drop)
    with pytest.raises(UpstreamUnavailable, match="still running"):
        run(httpx.MockTransport(recorder), lambda b: b.generate(REQUEST), connect_retries=3)
    assert len(recorder.requests) == 1


def dead_engine(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        500,
        json={
            "error": {
                "message": "EngineCore encountered an issue. See stack trace for the root cause.",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
        },
    )


@pytest.mark.parametrize("operation", ["generate", "stream", "unload_adapter"])
def test_a_dead_engine_is_unavailable_not_retried(operation: str) -> None:
    recorder = Recorder(dead_engine)
    with pytest.raises(UpstreamUnavailable, match=f"vLLM at {URL} failed .*restart vLLM"):
        run(httpx.MockTransport(recorder), OPERATIONS[operation], connect_retries=3)
    assert len(recorder.requests) == 1


def test_a_dead_engine_while_loading_is_unavailable_not_an_adapter_error(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": []})
        return dead_engine(request)

    with pytest.raises(UpstreamUnavailable, match="restart vLLM"):
        run(httpx.MockTransport(handler), lambda b: b.load_adapter("a", tmp_path / "remote"))


def test_unhealthy_is_unavailable() -> None:
    with pytest.raises(UpstreamUnavailable, match="GET /health answered 503"):
        run(httpx.MockTransport(lambda r: httpx.Response(503)), lambda b: b.health())


def test_a_bad_request_is_invalid_input_with_vllms_message() -> None:
    def too_long(request: httpx.Request) -> httpx.Response:
        message = "This model's maximum context length is 2048 tokens."
        return httpx.Response(400, json={"error": {"message": message, "code": 400}})

    with pytest.raises(InvalidInput, match="maximum context length is 2048"):
        run(httpx.MockTransport(too_long), lambda b: b.generate(REQUEST))


def sse(*events: object) -> httpx.Response:
    body = "".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events
    ).encode()
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def test_a_stream_that_breaks_off_is_unavailable() -> None:
    # The engine died mid-answer: no finish_reason, no usage, no [DONE].
    transport = httpx.MockTransport(lambda r: sse(chunk("Hel"), chunk("lo")))
    with pytest.raises(UpstreamUnavailable, match="ended the stream before finishing"):
        run(transport, collect)


def test_an_error_event_in_the_stream_is_raised() -> None:
    error = {"error": {"message": "EngineCore encountered an issue.", "code": 500}}
    transport = httpx.MockTransport(lambda r: sse(chunk("Hel"), error, "[DONE]"))
    with pytest.raises(UpstreamUnavailable, match="restart vLLM"):
        run(transport, collect)


def test_an_unusual_finish_reason_maps_to_stop() -> None:
    transport = httpx.MockTransport(
        lambda r: sse(chunk("Hi"), chunk("", finish="abort"), USAGE, "[DONE]")
    )
    deltas = run(transport, collect)
    assert [d.text for d in deltas] == ["Hi", ""]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 2


def test_a_lost_race_to_load_the_same_folder_is_not_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "alpha"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    loaded = {"id": "alpha", "root": str(folder), "parent": "base"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            # Absent at our first look, present once another caller's load went through.
            models = [loaded] if len(recorder.requests) > 1 else []
            return httpx.Response(200, json={"data": models})
        message = "The lora adapter 'alpha' has already been loaded."
        return httpx.Response(400, json={"error": {"message": message, "code": 400}})

    recorder = Recorder(handler)
    run(httpx.MockTransport(recorder), lambda b: b.load_adapter("alpha", folder))
    paths = [r.url.path for r in recorder.requests]
    assert paths == ["/v1/models", "/v1/load_lora_adapter", "/v1/models"]
    assert json.loads(recorder.requests[1].content) == {
        "lora_name": "alpha",
        "lora_path": str(folder),
    }


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    recorder = Recorder(lambda r: httpx.Response(200))
    run(httpx.MockTransport(recorder), lambda b: b.health(), api_key="s3cret-key")
    assert recorder.requests[0].headers["authorization"] == "Bearer s3cret-key"


def test_a_refused_api_key_says_which_setting_to_fix() -> None:
    def unauthorized(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "Unauthorized"})

    with pytest.raises(UpstreamUnavailable, match=r"set llm\.api_key"):
        run(httpx.MockTransport(unauthorized), lambda b: b.generate(REQUEST))
