"""What the fault tests share: a routes file, asking the API (whole, streamed, through the
openai client) with a deadline so that a hang fails the test instead of stalling it, and
waiting for the API to report itself ready again."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.capture import read_captures

# `ask` answers from the model alone (no retrieval), `docs` from a collection; both
# capture every answer, so the tests can check that no failed answer was recorded.
ROUTES = """\
routes:
  ask:
    kind: chat
    prompt: {user: "{question}"}
    generation: {max_tokens: 16, temperature: 0.0}
    capture: {}
  docs:
    kind: chat
    retrieval: {collection: COLLECTION, top_k: 2}
    prompt: {system: "Sources:\\n{context}", user: "{question}"}
    generation: {max_tokens: 16, temperature: 0.0}
    capture: {}
"""
QUESTION = "How do apples grow?"
# Longer than any answer here may take once healed; a request past it has hung.
HANG_S = 30.0


def write_routes(home: Path, collection: str = "docs") -> Path:
    """The routes file under `home`, route `docs` searching `collection`."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "routes.yaml"
    path.write_text(ROUTES.replace("COLLECTION", collection))
    return path


@dataclass
class Outcome:
    """One request's result: status, seconds to the last byte, and what came back."""

    status: int
    seconds: float
    headers: dict[str, str]
    body: Any = None  # the JSON body of a whole answer or error
    events: list[Any] = field(default_factory=list)  # a stream's data payloads, in order

    @property
    def error(self) -> dict[str, Any]:
        """The error object: the body's, or the stream's last event's."""
        if self.events:
            last = self.events[-2] if self.events[-1] == "[DONE]" else self.events[-1]
            error: dict[str, Any] = last["error"]
            return error
        found: dict[str, Any] = self.body["error"]
        return found

    def text(self) -> str:
        """The answer: whole, or joined from a stream's deltas (ragtune's or OpenAI's)."""
        if not self.events:
            if "answer" in self.body:
                return str(self.body["answer"])
            return str(self.body["choices"][0]["message"]["content"])
        parts = []
        for event in self.events:
            if not isinstance(event, dict):
                continue
            if event.get("type") == "delta":
                parts.append(event["text"])
            for choice in event.get("choices") or []:
                parts.append(choice["delta"].get("content") or "")
        return "".join(parts)


def ask(
    client: TestClient,
    route: str = "ask",
    *,
    stream: bool = False,
    openai: bool = False,
    question: str = QUESTION,
) -> Outcome:
    """POST /v1/chat (or /v1/chat/completions) and read the whole answer, within HANG_S."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": question}], "stream": stream}
    if openai:
        path, body["model"] = "/v1/chat/completions", route
    else:
        path, body["route"] = "/v1/chat", route

    def call() -> Outcome:
        started = time.perf_counter()
        response = client.post(path, json=body)
        seconds = time.perf_counter() - started
        headers = {k.lower(): v for k, v in response.headers.items()}
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return Outcome(response.status_code, seconds, headers, events=sse(response.text))
        return Outcome(response.status_code, seconds, headers, body=response.json())

    outcome: Outcome = within(call, HANG_S)
    return outcome


def within(call: Any, seconds: float) -> Any:
    """`call()`, failing the test if it has not returned after `seconds`: a hang."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    except FutureTimeout:
        raise AssertionError(f"no answer within {seconds:g} s: the request hung") from None
    finally:
        pool.shutdown(wait=False)


def sse(text: str) -> list[Any]:
    """The data payloads of an event stream (JSON decoded; `[DONE]` as is); pings skipped."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        data = [line[5:].strip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            payload = "\n".join(data)
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def wait_ready(client: TestClient, timeout_s: float = 15.0) -> float:
    """Seconds until GET /readyz answers 200 (Qdrant and the backend answer again)."""
    started = time.perf_counter()
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return time.perf_counter() - started
        assert time.perf_counter() - started < timeout_s, response.text
        time.sleep(0.05)


def captured_answers(data_dir: Path, route: str, expected: int) -> list[str]:
    """The answers captured on `route`, once the writer thread has written `expected` of them
    (or after a few seconds, however many there are)."""
    deadline = time.monotonic() + 5
    while True:
        answers = [str(r["answer"]) for r in read_captures(data_dir, route)]
        if len(answers) >= expected or time.monotonic() > deadline:
            return answers
        time.sleep(0.05)


def metric(client: TestClient, name: str, **labels: str) -> float:
    """A sample's value from /metrics (0 when absent)."""
    text = client.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample == name and got == want:
            total += float(value)
    return total
