"""Traffic becomes training data: routes with `capture` record their answers (sampled,
redacted before anything reaches disk) off the request path, every answer carries an id, and
POST /v1/feedback records what users thought of one. Through the real app, on a scripted
backend that echoes the question (so the answer holds what the caller sent)."""

from __future__ import annotations

import fcntl
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.types import ChatMessage, GenerationRequest
from ingest.store import point_id
from ragtune.errors import InvalidInput
from ragtune.settings import Settings
from service.capture import ReadStats, capture_file, read_captures, read_feedback
from service.chat.service import ChatCall
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app
from tests.fixtures.scripted_backend import ScriptedBackend

ROUTES = r"""
routes:
  cap:
    kind: chat
    retrieval: {collection: docs, top_k: 2}
    prompt: {system: "Sources:\n{context}", user: "Q: {question}"}
    capture: {sample: 1.0, redact: ['\d{3}-\d{4}', 'secret-\w+', 'sunlight']}
  never:
    kind: chat
    retrieval: {collection: docs, top_k: 2}
    prompt: {system: "{context}", user: "{question}"}
    capture: {sample: 0.0}
  bare:
    kind: chat
    prompt: {system: "Be brief.", user: "{question}"}
    capture: {}
  plain:
    kind: chat
    prompt: {system: "Be brief.", user: "{question}"}
"""
# The last is in the test corpus's fruit document: retrieved, so in the context.
SECRETS = ("555-1234", "secret-zebra", "secret-otter", "sunlight")
CAPTURE_KEYS = {
    "id",
    "time",
    "route",
    "messages",
    "question",
    "context",
    "prompt",
    "sources",
    "answer",
    "adapter",
    "usage",
    "latency_ms",
    "finish_reason",
}
ANSWER_ID = re.compile(r"chatcmpl-[0-9a-f]{32}")


def reply(request: GenerationRequest) -> str:
    question = request.messages[-1].content
    if "FAIL" in question:
        # Not UpstreamUnavailable: that would take the only backend out of rotation.
        raise InvalidInput("the scripted backend refused on purpose")
    return f"Apples grow in orchards [1]. You said: {question}"


def capture_settings(root: Path, model: Path, **overrides: Any) -> Settings:
    routes = root / "routes.yaml"
    routes.parent.mkdir(parents=True, exist_ok=True)
    routes.write_text(ROUTES)
    settings = api_settings(root, model, api={"routes_file": routes}, **overrides)
    ingest_corpus(settings)
    return settings


@pytest.fixture(scope="module")
def settings(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return capture_settings(tmp_path_factory.mktemp("capture"), tiny_model.path)


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend(reply, piece=4)


@pytest.fixture(scope="module")
def client(settings: Settings, backend: ScriptedBackend) -> Iterator[TestClient]:
    with running_app(settings, lambda _: [backend]) as client:
        yield client


def chat(route: str, question: str, **extra: Any) -> dict[str, Any]:
    return {"route": route, "messages": [{"role": "user", "content": question}], **extra}


def captured(settings: Settings, route: str, answer_id: str) -> dict[str, Any]:
    """The capture of one answer, once the writer thread has written it."""
    deadline = time.monotonic() + 10
    while True:
        for record in read_captures(settings.data_dir, route):
            if record["id"] == answer_id:
                return record
        assert time.monotonic() < deadline, f"{answer_id} was not captured on route {route}"
        time.sleep(0.02)


def all_captured(settings: Settings) -> list[dict[str, Any]]:
    folder = settings.data_dir / "captures"
    routes = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return [r for route in routes for r in read_captures(settings.data_dir, route)]


def events(text: str) -> list[dict[str, Any]]:
    blocks = [b.removeprefix("data: ") for b in text.strip().split("\n\n")]
    assert blocks[-1] == "[DONE]"
    return [json.loads(b) for b in blocks[:-1]]


def metric(client: TestClient, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_answer_is_captured_with_every_field(
    client: TestClient, settings: Settings, backend: ScriptedBackend
) -> None:
    messages = [
        {"role": "system", "content": "Answer gently."},
        {"role": "user", "content": "Do apples grow on trees?"},
        {"role": "assistant", "content": "They do."},
        {"role": "user", "content": "How do apples grow?"},
    ]
    body = client.post("/v1/chat", json={"route": "cap", "messages": messages}).json()
    assert ANSWER_ID.fullmatch(body["id"])
    sent = backend.requests[-1]
    record = captured(settings, "cap", body["id"])

    assert set(record) == CAPTURE_KEYS
    assert record["route"] == "cap"
    assert record["messages"] == messages
    assert record["question"] == "How do apples grow?"
    assert record["prompt"] == [
        {"role": m.role, "content": m.content.replace("sunlight", "[REDACTED]")}
        for m in sent.messages
    ]
    assert record["prompt"][0]["content"] == f"Sources:\n{record['context']}\n\nAnswer gently."
    assert record["context"].startswith("[1] fruit\nApples grow on trees")
    assert record["prompt"][-1] == {"role": "user", "content": "Q: How do apples grow?"}
    assert record["sources"] == [
        {
            "id": point_id(s["doc_id"], s["chunk_index"]),
            "document": s["doc_id"],
            "score": s["score"],
        }
        for s in body["sources"]
    ]
    assert len(record["sources"]) == 2
    assert record["answer"] == body["answer"]
    assert record["adapter"] is None
    assert record["usage"] == {
        "prompt_tokens": body["usage"]["prompt_tokens"],
        "completion_tokens": body["usage"]["completion_tokens"],
    }
    assert record["finish_reason"] == "stop"
    assert isinstance(record["latency_ms"], float)
    assert record["latency_ms"] > 0
    when = datetime.fromisoformat(record["time"])
    assert when.tzinfo is not None
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)
    path = capture_file(settings.data_dir, "cap", when.date())
    assert body["id"] in path.read_text(encoding="utf-8")


def test_a_route_without_retrieval_captures_an_empty_context(
    client: TestClient, settings: Settings
) -> None:
    body = client.post("/v1/chat", json=chat("bare", "Say hi")).json()
    record = captured(settings, "bare", body["id"])
    assert (record["context"], record["sources"]) == ("", [])
    assert record["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]


def test_sample_zero_and_no_capture_record_nothing(client: TestClient, settings: Settings) -> None:
    for _ in range(5):
        assert client.post("/v1/chat", json=chat("never", "apples?")).status_code == 200
        assert client.post("/v1/chat", json=chat("plain", "apples?")).status_code == 200
    # One queue, one writer: once this one is on disk, anything queued before it is too.
    captured(settings, "cap", client.post("/v1/chat", json=chat("cap", "pears?")).json()["id"])
    assert not (settings.data_dir / "captures" / "never").exists()
    assert not (settings.data_dir / "captures" / "plain").exists()
    assert metric(client, "ragtune_captured_total", route="never") == 0
    assert metric(client, "ragtune_captured_total", route="cap") >= 1


def test_redaction_happens_before_anything_reaches_disk(
    client: TestClient, settings: Settings, backend: ScriptedBackend
) -> None:
    question = "My number is 555-1234, my code secret-zebra: how do apples grow?"
    messages = [
        {"role": "system", "content": "The caller's pet is secret-otter."},
        {"role": "user", "content": question},
    ]
    body = client.post("/v1/chat", json={"route": "cap", "messages": messages}).json()
    # The caller and the model see everything: redaction is for what is kept.
    assert "555-1234" in body["answer"]
    assert "secret-otter" in backend.requests[-1].messages[0].content
    assert "sunlight" in backend.requests[-1].messages[0].content
    record = captured(settings, "cap", body["id"])
    assert record["question"] == "My number is [REDACTED], my code [REDACTED]: how do apples grow?"
    assert record["messages"][0]["content"] == "The caller's pet is [REDACTED]."
    assert "fruit gets [REDACTED] in summer" in record["context"]
    assert record["prompt"][-1]["content"] == f"Q: {record['question']}"
    assert record["answer"].endswith(f"You said: Q: {record['question']}")
    on_disk = b"".join(p.read_bytes() for p in settings.data_dir.rglob("*.jsonl"))
    for secret in SECRETS:
        assert secret.encode() not in on_disk


def test_a_stream_carries_its_id_and_is_captured_at_its_end(
    client: TestClient, settings: Settings
) -> None:
    response = client.post("/v1/chat", json=chat("cap", "Stream about apples", stream=True))
    got = events(response.text)
    first, last = got[0], got[-1]
    assert (first["type"], last["type"]) == ("sources", "done")
    assert ANSWER_ID.fullmatch(first["id"])
    assert last["id"] == first["id"]
    assert all("id" not in e for e in got[1:-1])
    record = captured(settings, "cap", first["id"])
    assert record["answer"] == "".join(e["text"] for e in got if e["type"] == "delta")
    assert record["question"] == "Stream about apples"
    assert len(record["sources"]) == len(first["sources"])


def test_the_openai_endpoint_answers_with_the_captured_id(
    client: TestClient, settings: Settings
) -> None:
    messages = [
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": "apples, please"},
    ]
    request: dict[str, Any] = {"model": "cap", "messages": messages}
    body = client.post("/v1/chat/completions", json=request).json()
    record = captured(settings, "cap", body["id"])
    assert record["answer"] == body["choices"][0]["message"]["content"]
    assert record["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "apples, please"},
    ]

    streamed = client.post("/v1/chat/completions", json={**request, "stream": True})
    chunks = events(streamed.text)
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    (answer_id,) = ids
    assert ANSWER_ID.fullmatch(answer_id)
    record = captured(settings, "cap", answer_id)
    assert record["answer"] == "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def test_dry_runs_failures_and_in_process_calls_are_not_captured(
    client: TestClient, settings: Settings
) -> None:
    before = {r["id"] for r in all_captured(settings)}
    dry = client.post("/v1/chat", json=chat("cap", "apples?", dry_run=True))
    assert dry.status_code == 200
    assert "id" not in dry.json()
    assert client.post("/v1/chat", json=chat("cap", "FAIL now")).status_code == 422
    streamed = client.post("/v1/chat", json=chat("cap", "FAIL now", stream=True))
    assert events(streamed.text)[-1]["type"] == "error"
    # An evaluation (or a dataset build) calls the service in process: not traffic.
    chat_service = client.app_state["services"].chat
    call = ChatCall("cap", [ChatMessage(role="user", content="in-process apples")])
    assert client.portal is not None
    in_process = client.portal.call(chat_service.answer, call)
    assert ANSWER_ID.fullmatch(in_process.id)
    last = client.post("/v1/chat", json=chat("cap", "apples once more")).json()["id"]
    captured(settings, "cap", last)
    assert {r["id"] for r in all_captured(settings)} - before == {last}


def test_capture_files_are_append_only_one_per_route_and_day(
    client: TestClient, settings: Settings
) -> None:
    first = client.post("/v1/chat", json=chat("cap", "one")).json()["id"]
    path = capture_file(
        settings.data_dir,
        "cap",
        datetime.fromisoformat(captured(settings, "cap", first)["time"]).date(),
    )
    before = path.read_bytes()
    second = client.post("/v1/chat", json=chat("cap", "two")).json()["id"]
    captured(settings, "cap", second)
    after = path.read_bytes()
    assert after.startswith(before)
    assert [json.loads(line)["id"] for line in after[len(before) :].splitlines()] == [second]
    for route in ("cap", "bare"):
        files = list((settings.data_dir / "captures" / route).iterdir())
        assert [f.name for f in files] == [f"{datetime.now(UTC).date().isoformat()}.jsonl"]


def test_feedback_is_recorded_and_the_latest_wins(client: TestClient, settings: Settings) -> None:
    answer = client.post("/v1/chat", json=chat("cap", "How do apples grow?")).json()
    first = {"id": answer["id"], "rating": -1, "comment": "too vague"}
    response = client.post("/v1/feedback", json=first)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": answer["id"], "recorded": True}
    # On disk when answered: no waiting.
    assert read_feedback(settings.data_dir)[answer["id"]]["rating"] == -1

    second = {
        "id": answer["id"],
        "rating": 1,
        "correction": "On trees, in orchards. Call 555-1234.",
        "comment": None,
    }
    assert client.post("/v1/feedback", json=second).status_code == 200
    latest = read_feedback(settings.data_dir)[answer["id"]]
    assert set(latest) == {"id", "time", "rating", "correction", "comment"}
    # The capture routes' patterns apply to what users write too.
    assert latest["correction"] == "On trees, in orchards. Call [REDACTED]."
    assert (latest["rating"], latest["comment"]) == (1, None)
    day = datetime.fromisoformat(latest["time"]).date().isoformat()
    written = (settings.data_dir / "feedback" / f"{day}.jsonl").read_text().splitlines()
    assert [json.loads(line)["rating"] for line in written[-2:]] == [-1, 1]
    assert metric(client, "ragtune_feedback_total", rating="1") >= 1


def test_feedback_on_an_answer_not_captured_here_is_accepted(
    client: TestClient, settings: Settings
) -> None:
    # Captures are sampled, or on another replica: an unknown id is not an error.
    unknown = "chatcmpl-" + "0" * 32
    response = client.post("/v1/feedback", json={"id": unknown, "rating": 0})
    assert response.status_code == 200, response.text
    assert read_feedback(settings.data_dir)[unknown]["rating"] == 0


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"rating": 1}, "id", "Field required"),
        ({"id": "answer-1", "rating": 1}, "id", "not an answer id"),
        ({"id": "ID", "rating": 2}, "rating", "-1, 0 or 1"),
        ({"id": "ID", "rating": True}, "rating", "as a JSON integer"),
        ({"id": "ID", "rating": "1"}, "rating", "as a JSON integer"),
        ({"id": "ID", "rating": 1.0}, "rating", "as a JSON integer"),
        ({"id": "ID"}, "rating", "Field required"),
        ({"id": "ID", "rating": 1, "correction": "  "}, "correction", "is empty"),
        ({"id": "ID", "rating": 1, "stars": 5}, "stars", "unknown field"),
    ],
    ids=[
        "no-id",
        "not-an-id",
        "rating-2",
        "rating-true",
        "rating-string",
        "rating-float",
        "no-rating",
        "blank-correction",
        "unknown-field",
    ],
)
def test_bad_feedback_is_422_naming_the_field(
    client: TestClient, settings: Settings, body: dict[str, Any], param: str, says: str
) -> None:
    if body.get("id") == "ID":
        body = {**body, "id": "chatcmpl-" + "a" * 32}
    response = client.post("/v1/feedback", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert says in error["message"]


def test_feedback_that_is_not_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/feedback", content=b"{rating", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["error"]["message"]


def test_a_full_queue_drops_and_counts_without_slowing_requests(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    settings = capture_settings(tmp_path, tiny_model.path, capture={"queue_size": 1})
    now = datetime.now(UTC).date()
    # Today's file (and tomorrow's, should the test cross midnight) locked, as by a process
    # stuck on a stalled disk: the writer thread waits on the lock.
    days = [capture_file(settings.data_dir, "cap", d) for d in (now, now + timedelta(days=1))]
    asked = 6
    with running_app(settings, lambda _: [ScriptedBackend(reply)]) as client:
        with ExitStack() as stack:
            for path in days:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = stack.enter_context(path.open("ab"))
                fcntl.flock(f, fcntl.LOCK_EX)
            statuses: list[int] = []

            def ask() -> None:
                for i in range(asked):
                    statuses.append(client.post("/v1/chat", json=chat("cap", f"q{i}")).status_code)

            asking = threading.Thread(target=ask)
            asking.start()
            asking.join(timeout=60)
            assert not asking.is_alive(), "a request waited for the capture writer"
            assert statuses == [200] * asked
            dropped = metric(
                client, "ragtune_capture_dropped_total", route="cap", reason="queue_full"
            )
            # One record at most in the writer's hands, one in the queue.
            assert dropped >= asked - 2
            full = client.post("/v1/feedback", json={"id": "chatcmpl-" + "b" * 32, "rating": 1})
            assert full.status_code == 503
            assert "capture writer is behind" in full.json()["error"]["message"]
            assert full.headers["Retry-After"] == "5"
        # Lock released: the writer catches up with what it accepted, and only that.
        kept = asked - dropped
        deadline = time.monotonic() + 10
        while metric(client, "ragtune_captured_total", route="cap") < kept:
            assert time.monotonic() < deadline, "the writer did not catch up"
            time.sleep(0.02)
    stats = ReadStats()
    records = list(read_captures(settings.data_dir, "cap", stats=stats))
    assert len(records) == kept
    assert [r["question"] for r in records] == sorted(r["question"] for r in records)
    assert stats.torn == 0
