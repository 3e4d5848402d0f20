"""What a request may send: bodies (size, arrival time, JSON depth) and header blocks (size,
arrival time), each refused with a 4xx in the app's error shape, never a 500; CORS off unless
origins are listed. The server's own limits are tested on a real socket under `ragtune serve`'s
uvicorn configuration, with short limits (conftest: 1.5 s, 4 kB)."""

from __future__ import annotations

import contextlib
import json
import select
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from ragtune.settings import Settings
from service.app import create_app
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings
from tests.integration.service.security.conftest import (
    BODY_TIMEOUT_S,
    MAX_HEADER_BYTES,
    SecurityApi,
    connect,
    read_response,
)

Address = tuple[str, int]
MESSAGES = [{"role": "user", "content": "When does the ferry leave?"}]


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of one HTTP/1.1 response with a Content-Length."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


# -- JSON depth (in process) -----------------------------------------------------------------


def test_a_100k_deep_body_is_422_not_a_recursion_error(security_api: SecurityApi) -> None:
    # Python's json raises RecursionError near 1,000 levels; this is refused before parsing.
    body = b"[" * 100_000 + b"]" * 100_000
    for method, path, send in (
        ("POST", "/v1/chat", security_api.user),
        ("POST", "/v1/chat/completions", security_api.user),
        ("POST", "/admin/adapters", security_api.admin),
    ):
        response = send(method, path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"] == {
            "message": "the JSON body nests arrays and objects deeper than this server's limit "
            "of 64 levels (api.max_json_depth); flatten it",
            "type": "invalid_request_error",
            "param": None,
            "code": "json_too_deep",
        }


def test_depth_is_counted_to_the_limit_and_strings_do_not_nest(
    security_api: SecurityApi,
) -> None:
    def ask(extra: Any) -> Any:
        # OpenAI bodies tolerate unknown fields: `extra` reaches the parser, then is ignored.
        body = {"model": "chat", "messages": MESSAGES, "extra": extra}
        return security_api.user("POST", "/v1/chat/completions", json=body)

    # The outer object is the first level.
    assert ask(nested(63)).status_code == 200
    refused = ask(nested(64))
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "json_too_deep"
    text = '[{"' * 5_000 + '\\"]}' * 5_000
    assert ask(text).status_code == 200


# -- bodies on the wire ------------------------------------------------------------------------


def post_head(length: int, path: str = "/v1/chat", *, close: bool = False) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
        "\r\n"
    ).encode()


def test_a_slow_body_gets_408_and_the_connection_closes(socket_api: Address) -> None:
    body = json.dumps({"route": "chat", "messages": MESSAGES}).encode()
    with connect(socket_api) as sock:
        sock.sendall(post_head(len(body)) + body[:10])
        started = time.monotonic()
        sent = 10
        answer = b""
        # One byte every 0.3 s: each arrives well within any per-read timeout.
        while sent < len(body) and not answer:
            if select.select([sock], [], [], 0.3)[0]:
                answer = read_response(sock)
                break
            sock.sendall(body[sent : sent + 1])
            sent += 1
        elapsed = time.monotonic() - started
    status, headers, error = parse(answer)
    assert status == 408
    assert headers["connection"] == "close"
    assert error["error"]["code"] == "request_timeout"
    assert f"within {BODY_TIMEOUT_S:g} s (api.body_timeout_s)" in error["error"]["message"]
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 5
    assert sent < len(body)  # cut off, not waited for


@pytest.mark.parametrize(
    ("path", "length", "status", "code"),
    [("/v1/chat", 5_000_000, 413, "request_too_large"), ("/v1/nothing", 100, 404, None)],
    ids=["over-the-size-limit", "unknown-path"],
)
def test_a_body_the_app_never_reads_does_not_hold_the_connection(
    socket_api: Address, path: str, length: int, status: int, code: str | None
) -> None:
    """Answered before its body arrived, the connection is closed rather than left open
    for the rest of the body to trickle in."""
    with connect(socket_api) as sock:
        sock.sendall(post_head(length, path) + b"{")
        answer = parse(read_response(sock))
    assert answer[0] == status
    assert answer[1]["connection"] == "close"
    assert answer[2]["error"]["code"] == code


def test_a_body_in_time_is_answered(socket_api: Address) -> None:
    body = json.dumps({"model": "plain", "messages": MESSAGES}).encode()
    with connect(socket_api) as sock:
        head = post_head(len(body), "/v1/chat/completions", close=True)
        sock.sendall(head + body[:20])
        time.sleep(BODY_TIMEOUT_S / 3)
        sock.sendall(body[20:])
        status, _, answer = parse(read_response(sock))
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"] == "ok"


# -- header blocks on the wire -----------------------------------------------------------------


def get(path: str = "/healthz", *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *extra, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def test_headers_under_the_limit_are_served(socket_api: Address) -> None:
    with connect(socket_api) as sock:
        sock.sendall(get("/healthz", "X-Padding: " + "a" * (MAX_HEADER_BYTES - 200)))
        status, _, body = parse(read_response(sock))
    assert (status, body) == (200, {"status": "ok"})


@pytest.mark.parametrize("size", [MAX_HEADER_BYTES, 64_000, 1_000_000])
def test_a_header_block_over_the_limit_gets_431(socket_api: Address, size: int) -> None:
    with connect(socket_api) as sock:
        # The server may stop reading once past the limit.
        with contextlib.suppress(OSError):
            sock.sendall(get("/healthz", "X-Big: " + "a" * size))
        status, headers, error = parse(read_response(sock))
    assert status == 431
    assert headers["connection"] == "close"
    assert error["error"] == {
        "message": "the request line and headers are larger than this server's limit of "
        f"{MAX_HEADER_BYTES} bytes (api.max_header_bytes); send fewer or shorter headers",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_header_fields_too_large",
    }


def test_a_header_block_is_refused_before_it_ends(socket_api: Address) -> None:
    """Sent piece by piece and never finished: refused once past the limit, not buffered."""
    piece = b"X-More: " + b"b" * 1_000 + b"\r\n"
    with connect(socket_api) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        sent = 0
        while not select.select([sock], [], [], 0.05)[0]:
            sock.sendall(piece)
            sent += len(piece)
            assert sent < 20 * MAX_HEADER_BYTES, "no answer: the header block is being buffered"
        status, _, error = parse(read_response(sock))
    assert status == 431
    assert sent <= MAX_HEADER_BYTES + 2 * len(piece)
    assert error["error"]["code"] == "request_header_fields_too_large"


def test_slow_headers_get_408(socket_api: Address) -> None:
    with connect(socket_api) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        while not select.select([sock], [], [], 0.3)[0]:
            sock.sendall(b"X: y\r\n")  # a header every 0.3 s, never the blank line
            assert time.monotonic() - started < BODY_TIMEOUT_S + 5, "still waiting"
        status, headers, error = parse(read_response(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert error["error"]["code"] == "request_timeout"
    assert "headers did not arrive within" in error["error"]["message"]
    assert time.monotonic() - started >= BODY_TIMEOUT_S


def test_a_connection_that_sends_nothing_is_closed(socket_api: Address) -> None:
    with connect(socket_api) as sock:
        started = time.monotonic()
        assert read_response(sock) == b""
    assert BODY_TIMEOUT_S <= time.monotonic() - started < BODY_TIMEOUT_S + 5


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost test\r\n\r\n",
        b"POST /v1/chat HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["header-without-colon", "bad-chunk-size", "tls-hello"],
)
def test_malformed_http_gets_400_in_the_error_shape(
    socket_api: Address, request_bytes: bytes
) -> None:
    with connect(socket_api) as sock:
        sock.sendall(request_bytes)
        status, headers, error = parse(read_response(sock))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert error["error"]["code"] == "invalid_http"
    assert "not valid HTTP/1.1" in error["error"]["message"]


# -- CORS ----------------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"


def preflight(client: TestClient, origin: str = ORIGIN) -> Any:
    return client.options(
        "/v1/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_is_off_by_default(security_api: SecurityApi) -> None:
    assert security_api.settings.api.cors_origins == []
    response = preflight(security_api.client)
    assert response.status_code == 405  # nothing answers OPTIONS
    simple = security_api.user("POST", "/v1/chat", json={}, headers={"Origin": ORIGIN})
    for answer in (response, simple):
        assert not any(h.startswith("access-control-") for h in answer.headers), answer.headers


def cors_client(tiny_model: TinyModel, tmp_path: Any, origins: list[str]) -> TestClient:
    settings = api_settings(tmp_path, tiny_model.path, api={"cors_origins": origins})
    # CORS is answered before the app: its lifespan (model loading) is not needed.
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_cors_allows_only_the_listed_origins(tiny_model: TinyModel, tmp_path: Any) -> None:
    client = cors_client(tiny_model, tmp_path, [ORIGIN, "http://localhost:3000"])
    allowed = preflight(client)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    simple = client.get("/healthz", headers={"Origin": "http://localhost:3000"})
    assert simple.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "retry-after" in simple.headers["access-control-expose-headers"].lower()
    for other in ("https://evil.example.com", "https://app.example.com.evil.net", "null"):
        refused = preflight(client, other)
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        simple = client.get("/healthz", headers={"Origin": other})
        assert "access-control-allow-origin" not in simple.headers


def test_cors_any_origin_never_allows_credentials(tiny_model: TinyModel, tmp_path: Any) -> None:
    client = cors_client(tiny_model, tmp_path, ["*"])
    response = preflight(client, "https://anywhere.example")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    cookie = client.get(
        "/healthz", headers={"Origin": "https://anywhere.example", "Cookie": "session=1"}
    )
    assert cookie.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in cookie.headers


@pytest.mark.parametrize(
    ("origins", "problem"),
    [
        (["https://app.example.com/"], r"cors_origins\[0\] \('https://app.example.com/'\)"),
        (["https://a.example", "app.example.com"], r"cors_origins\[1\].*is not an origin"),
        (["https://a.example/path"], "no path or trailing slash"),
        (["ftp://a.example"], "is not an origin"),
    ],
)
def test_bad_origins_are_refused_at_load(tmp_path: Any, origins: list[str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(data_dir=tmp_path, api={"cors_origins": origins})


def test_origins_come_from_the_env_as_a_json_list(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTUNE_API__CORS_ORIGINS", json.dumps([ORIGIN]))
    assert Settings(data_dir=tmp_path).api.cors_origins == [ORIGIN]
    monkeypatch.setenv("RAGTUNE_API__CORS_ORIGINS", ORIGIN)
    with pytest.raises(ValidationError, match=r"api\.cors_origins must be a JSON list"):
        Settings(data_dir=tmp_path)
