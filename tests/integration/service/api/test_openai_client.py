"""`ragtune serve` as a user runs it, called with the official `openai` client: one real server
process per module (tiny model, embedded Qdrant on disk), stopped with a signal at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from engine.vllm_cpu import free_port
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app
from tests.fixtures.scripted_backend import ScriptedBackend

READY_TIMEOUT_S = 180.0
QUESTION = "How long should bread dough be kneaded?"


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        """Everything the server printed so far, for failure messages."""
        return (
            f"--- stdout ---\n{self.stdout.read_text(errors='replace')}\n"
            f"--- stderr ---\n{self.stderr.read_text(errors='replace')[-8000:]}"
        )


def serve_command(port: int) -> list[str]:
    """The installed `ragtune` script next to this Python, else the module."""
    script = Path(sys.executable).parent / "ragtune"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
    return [*head, "serve", "--port", str(port)]


def wait_healthy(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(
                    f"ragtune serve exited with code {server.process.returncode} before "
                    f"/healthz answered\n{server.output()}"
                )
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    pytest.fail(f"ragtune serve did not answer /healthz within {timeout_s:g} s\n{server.output()}")


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    settings = api_settings(root, tiny_model.path)
    # Closes its embedded Qdrant again: `serve` must be able to take the on-disk lock.
    ingest_corpus(settings)
    port = free_port()
    env = {
        **os.environ,
        "RAGTUNE_DATA_DIR": str(settings.data_dir),
        "RAGTUNE_LLM__MODEL": str(tiny_model.path),
        "RAGTUNE_LLM__DTYPE": "float32",
    }
    stdout, stderr = root / "stdout.log", root / "stderr.log"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(serve_command(port), env=env, stdout=out, stderr=err)
    running = Server(f"http://127.0.0.1:{port}", process, stdout, stderr)
    try:
        wait_healthy(running, READY_TIMEOUT_S)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


# Not `client`: that name is the package conftest's in-process TestClient.
@pytest.fixture(scope="module")
def openai_client(server: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def ask(client: OpenAI, **extra: Any) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=8,
        temperature=0.0,
        **extra,
    )


def test_banner_shows_the_url_and_examples(server: Server) -> None:
    # Printed once start-up is complete, which /healthz answering already showed; the poll
    # only covers the moment between the socket opening and the print.
    deadline = time.monotonic() + 10.0
    while "openai" not in (stdout := server.stdout.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"ragtune is serving on {server.url}" in stdout, server.output()
    assert "curl" in stdout
    assert "openai" in stdout
    assert f'base_url="{server.url}/v1"' in stdout


def test_models_lists_the_chat_routes(openai_client: OpenAI) -> None:
    page = openai_client.models.list()
    ids = {model.id for model in page}
    assert "chat" in ids
    assert "chat-plain" in ids
    assert "summarize" not in ids  # a summarize route cannot answer chat completions
    # ragtune's extension rides along where the client keeps unknown fields.
    assert all(len(model.model_extra["ragtune"]["fingerprint"]) == 64 for model in page.data)
    assert page.model_extra is not None
    assert page.model_extra["ragtune"]["base_model"]["backend"] == "embedded"


def test_completion_has_content_usage_and_sources(openai_client: OpenAI) -> None:
    response = ask(openai_client)
    assert response.model == "chat"
    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None
    assert 0 < response.usage.completion_tokens <= 8
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )
    assert response.model_extra is not None
    sources = response.model_extra["ragtune"]["sources"]
    assert sources
    assert [s["number"] for s in sources] == list(range(1, len(sources) + 1))


def test_stream_matches_the_completion(openai_client: OpenAI) -> None:
    whole = ask(openai_client)
    stream = ask(openai_client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    # The usage chunk comes last, with no choices, and counts what the completion counted.
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert whole.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_unknown_model_is_not_found(openai_client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.chat.completions.create(
            model="no-such-route", messages=[{"role": "user", "content": QUESTION}]
        )
    assert "no-such-route" in str(caught.value)


def test_filters_in_extra_body_limit_the_sources(openai_client: OpenAI) -> None:
    unfiltered = ask(openai_client, extra_body={"top_k": 10})
    assert unfiltered.model_extra is not None
    every = {s["source"] for s in unfiltered.model_extra["ragtune"]["sources"]}
    assert any(not s.endswith(".md") for s in every)  # else the filter would prove nothing
    response = ask(openai_client, extra_body={"filters": {"file_type": "md"}, "top_k": 10})
    assert response.model_extra is not None
    sources = response.model_extra["ragtune"]["sources"]
    assert sources
    assert all(s["source"].endswith(".md") for s in sources), sources


def test_the_client_reads_a_stream_with_keep_alive_pings(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`: ping` comments (sent while a long answer is generated) are skipped by the openai
    client: the app in process, pings every 50 ms, an engine that is silent for a second."""
    monkeypatch.setattr("service.sse.PING_INTERVAL_S", 0.05)
    slow = ScriptedBackend("a slow answer", delay_s=1.0)
    with running_app(api_settings(tmp_path, tiny_model.path), lambda _: [slow]) as http:
        raw = http.post(
            "/v1/chat/completions",
            json={"model": "chat-plain", "messages": [{"role": "user", "content": "hi"}]}
            | {"stream": True},
        ).text
        assert ": ping\n\n" in raw  # else the test would prove nothing
        with OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http) as client:
            stream = client.chat.completions.create(
                model="chat-plain", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a slow answer"
    assert chunks[-1].choices[0].finish_reason == "stop"


# Last in the module: it stops the shared server. SIGINT (Ctrl-C, as uvicorn's log suggests);
# SIGTERM takes the same graceful path in uvicorn, then re-raises, so the process ends by it.
def test_server_stops_cleanly_on_ctrl_c(server: Server) -> None:
    server.process.send_signal(signal.SIGINT)
    try:
        code = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ragtune serve was still running 60 s after SIGINT\n{server.output()}")
    stderr = server.stderr.read_text()
    # The lifespan's shutdown ran (backend, adapter sync and Qdrant closed), without a crash.
    assert "Application shutdown complete" in stderr, server.output()
    assert "Finished server process" in stderr, server.output()
    assert "Traceback" not in stderr, server.output()
    assert code in (0, 128 + signal.SIGINT), server.output()
