"""`ragtune serve` on SIGTERM (Kubernetes stopping a pod, `docker stop`): it stops accepting
connections at once, lets the answer being streamed finish (drained, not cut), writes what was
captured, and exits 0. A real server process on the tiny model's embedded engine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.vllm_cpu import free_port
from service.capture import read_captures
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings

MAX_TOKENS = 256
ROUTES = f"""\
routes:
  long:
    kind: chat
    prompt: {{user: "{{question}}"}}
    generation: {{max_tokens: {MAX_TOKENS}, temperature: 0.0}}
    capture: {{}}
"""


@dataclass
class Stream:
    """An SSE answer read on a thread: its events, and when it ended."""

    events: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    ended_at: float | None = None
    error: BaseException | None = None
    first: threading.Event = field(default_factory=threading.Event)


def read_stream(url: str, stream: Stream) -> None:
    body = {
        "model": "long",
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        with (
            httpx.Client(base_url=url, timeout=120) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    stream.done = True
                elif line.startswith("data: "):
                    stream.events.append(json.loads(line[6:]))
                    stream.first.set()
    except BaseException as exc:
        stream.error = exc
    finally:
        stream.ended_at = time.monotonic()
        stream.first.set()


@pytest.fixture
def server(tiny_model: TinyModel, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    settings = api_settings(tmp_path, tiny_model.path)
    (tmp_path / "routes.yaml").write_text(ROUTES)
    port = free_port()
    env = {
        **os.environ,
        "RAGTUNE_DATA_DIR": str(settings.data_dir),
        "RAGTUNE_LLM__MODEL": str(tiny_model.path),
        "RAGTUNE_LLM__DTYPE": "float32",
        "RAGTUNE_API__ROUTES_FILE": str(tmp_path / "routes.yaml"),
        "RAGTUNE_API__SHUTDOWN_TIMEOUT_S": "60",
    }
    script = Path(sys.executable).parent / "ragtune"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [*head, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        log.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_a_stream_then_exits_0(
    server: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    process, port = server
    stream = Stream()
    reader = threading.Thread(target=read_stream, args=(f"http://127.0.0.1:{port}", stream))
    reader.start()
    assert stream.first.wait(120), "no first event"
    assert stream.error is None, stream.error
    process.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    # New connections are refused while the stream is still being answered.
    while not refused(port):
        assert time.monotonic() - signalled_at < 10, "still accepting connections"
        time.sleep(0.05)
    refused_at = time.monotonic()
    reader.join(timeout=120)
    log = (tmp_path / "serve.log").read_text()
    assert stream.error is None, f"{stream.error!r}\n{log}"
    assert stream.ended_at is not None
    assert refused_at < stream.ended_at, "the stream was over before the signal: nothing drained"
    # The answer came whole: every token, its finish reason, usage, then [DONE].
    assert stream.done, log
    text = "".join(str(e["choices"][0]["delta"].get("content") or "") for e in choices(stream))
    finish = choices(stream)[-1]["choices"][0]["finish_reason"]
    assert finish in ("stop", "length")
    usage = stream.events[-1]["usage"]
    assert usage["completion_tokens"] >= 1
    assert process.wait(timeout=90) == 0, log
    assert "Waiting for connections to close" in log
    # What the route captured was written before the process ended.
    [record] = read_captures(tmp_path / "data", "long")
    assert record["id"] == stream.events[0]["id"]
    assert (record["answer"], record["finish_reason"]) == (text, finish)
    assert record["usage"]["completion_tokens"] == usage["completion_tokens"]


def choices(stream: Stream) -> list[dict[str, Any]]:
    return [e for e in stream.events if e["choices"]]
