"""Hot-swap test helpers: an API whose route `tone` serves an alias with two registered
versions of a tiny-model adapter, and a client that asks the route and reads back which
version answered.

Each version's greedy answer to the fixed prompt is recorded once, so a later answer proves
which weights produced it (not only which name the API reports).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from engine.vllm_cpu import VLLMServer
from ragtune.settings import Settings
from tests.fixtures.api import admin_headers, api_settings
from tests.fixtures.tiny_model import build_lora

ALIAS = "tone"
ROUTES = f"""\
routes:
  {ALIAS}:
    kind: chat
    adapter: {ALIAS}
    prompt: {{user: '{{question}}'}}
"""
QUESTION = "def add(a, b):"
MAX_TOKENS = 6


def swap_settings(home: Path, model: Path, **overrides: Any) -> Settings:
    """API settings on `home` with the `tone` route, and the two adapter versions staged
    under `<adapter root>/incoming/{a,b}` (random LoRA weights, seeds 1 and 2)."""
    home.mkdir(parents=True, exist_ok=True)
    routes = home / "routes.yaml"
    routes.write_text(ROUTES)
    settings = api_settings(home, model, api={"routes_file": routes}, **overrides)
    incoming = settings.adapters_root() / "incoming"
    for name, seed in (("a", 1), ("b", 2)):
        build_lora(model, incoming / name, rank=8, seed=seed)
    return settings


@dataclass(frozen=True)
class Answer:
    """One request's outcome: HTTP status, the version that answered and its text."""

    status: int
    adapter: str | None
    text: str
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def ask(client: TestClient, *, stream: bool = False) -> Answer:
    """Ask the `tone` route the fixed question, greedily, and read back who answered."""
    body = {
        "route": ALIAS,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "stream": stream,
    }
    started = time.monotonic()
    response = client.post("/v1/chat", json=body)
    ended = time.monotonic()
    if response.status_code != 200:
        return Answer(response.status_code, None, "", response.text, started, ended)
    if not stream:
        data = response.json()
        return Answer(200, data["adapter"], data["answer"], None, started, ended)
    events = [
        json.loads(block.removeprefix("data: "))
        for block in response.text.strip().split("\n\n")
        if block != "data: [DONE]"
    ]
    adapter = next((e.get("adapter") for e in events if e.get("type") == "sources"), None)
    text = "".join(e.get("text", "") for e in events if e.get("type") == "delta")
    # An error after the 200 went out is a last event with an "error" member.
    error = next((json.dumps(e) for e in events if "error" in e), None)
    if error is None and events[-1].get("type") != "done":
        error = f"the stream ended without a done event: {events[-1]}"
    return Answer(200, adapter, text, error, started, ended)


def register(client: TestClient, folder: str, alias: str | None = None) -> str:
    """Register `<adapter root>/incoming/<folder>` as a version of `tone`; its ref."""
    body: dict[str, Any] = {"path": f"incoming/{folder}", "name": ALIAS}
    if alias is not None:
        body["alias"] = alias
    response = client.post("/admin/adapters", json=body, headers=admin_headers())
    assert response.status_code == 201, response.text
    ref: str = f"{ALIAS}@{response.json()['adapter']['version']}"
    return ref


def flip(client: TestClient, target: str) -> None:
    response = client.put(
        f"/admin/aliases/{ALIAS}", json={"target": target}, headers=admin_headers()
    )
    assert response.status_code == 200, response.text
    assert response.json()["target"] == target


def status(client: TestClient) -> dict[str, Any]:
    response = client.get("/admin/status", headers=admin_headers())
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def wait_for(
    client: TestClient, done: Callable[[dict[str, Any]], bool], timeout_s: float = 15.0
) -> dict[str, Any]:
    """Poll /admin/status until `done(status)`; the last status either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = status(client)
        if done(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.2)


def settled_on(ref: str) -> Callable[[dict[str, Any]], bool]:
    """Status shows the alias on `ref`, no drift, nothing in flight, every backend holding
    `ref` and no other version of it (older ones drained and unloaded). A shared vLLM server
    may hold other tests' adapters: those are not looked at."""

    def check(current: dict[str, Any]) -> bool:
        return (
            current["active"] == {ALIAS: ref}
            and not current["drift"]
            and not current["inflight"]
            and all(b["up"] and versions(b["loaded"]) == [ref] for b in current["backends"])
        )

    return check


def versions(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith(f"{ALIAS}@")]


def references(client: TestClient, a: str, b: str) -> dict[str, str]:
    """Each version's greedy answer (the alias is on `a` before and after), checked to be
    different and to be what streaming gives too."""
    answers = {}
    for ref in (b, a):
        flip(client, ref)
        whole, streamed = ask(client), ask(client, stream=True)
        assert whole.ok, whole
        assert streamed.ok, streamed
        assert whole.adapter == streamed.adapter == ref
        assert streamed.text == whole.text
        answers[ref] = whole.text
    assert answers[a] != answers[b], "the two versions must answer differently to tell them apart"
    return answers


def unload_behind_the_back(server: VLLMServer) -> None:
    """Unload every `tone` version straight from vLLM, as a restarted replica would hold none."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for ref in vllm_adapters(server):
            response = http.post("/v1/unload_lora_adapter", json={"lora_name": ref})
            assert response.status_code == 200, response.text


def vllm_adapters(server: VLLMServer) -> list[str]:
    """The `tone` versions vLLM holds, asked from vLLM itself."""
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
    return sorted(m["id"] for m in models if m["id"].startswith(f"{ALIAS}@"))


def vllm_settings(server: VLLMServer, home: Path, model: Path, **llm: Any) -> Settings:
    values = {"vllm_url": server.url, "max_loras": server.max_loras, "timeout_s": 60, **llm}
    return swap_settings(home, model, llm=values)
