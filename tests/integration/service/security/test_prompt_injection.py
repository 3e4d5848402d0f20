"""A document in the corpus that tells the model to ignore its instructions, call the admin
API, read /etc/passwd and switch adapters. The backend here obeys any instruction it sees
(the worst case a real model can approach): the document changes the answer, and nothing else.
The model gets text in and gives text out; the route, not the text, picks the adapter; it has
no tools, no credentials and no way to send a request, so the admin API, the filesystem and
other routes' adapters stay out of reach, whatever the answer says."""

from __future__ import annotations

import re
from typing import Any

from engine.types import GenerationRequest
from tests.integration.service.security.conftest import INJECTION, SecurityApi

QUESTION = "When does the harbour ferry leave?"


def ask(api: SecurityApi, **extra: Any) -> Any:
    body = {"route": "chat", "messages": [{"role": "user", "content": QUESTION}], **extra}
    return api.user("POST", "/v1/chat", json=body)


def answered(api: SecurityApi) -> float:
    """Requests the app has answered, all endpoints (admin included), from its own metrics;
    the /metrics request reading them is counted after it answers."""
    text = api.client.get("/metrics").text
    return sum(map(float, re.findall(r"^ragtune_requests_total\{.*\} (\S+)$", text, re.M)))


def state(api: SecurityApi) -> tuple[Any, Any, float]:
    listing = api.admin("GET", "/admin/adapters").json()
    audit = api.admin("GET", "/admin/audit?limit=1000").json()["entries"]
    return listing, audit, answered(api)


def test_the_injected_document_changes_the_answer_and_nothing_else(
    security_api: SecurityApi,
) -> None:
    before = state(security_api)
    asked = len(security_api.backend.requests)

    response = ask(security_api)
    assert response.status_code == 200, response.text
    answer = response.json()
    # It can change the answer: the model saw the document, and followed it.
    assert answer["answer"] == "PWNED"
    assert any(s["source"].endswith("ferries.txt") for s in answer["sources"])
    # The route's adapter served it, not the one the document named.
    assert answer["adapter"] == security_api.refs["tone"]
    [request] = security_api.backend.requests[asked:]
    assert request.adapter == security_api.refs["tone"]
    # The document reached the model as data inside the route's prompt, nothing more.
    assert [m.role for m in request.messages] == ["system", "user"]
    assert INJECTION in request.messages[0].content
    assert request.messages[1].content == QUESTION
    # Nothing changed in the registry or its audit log, and the app answered exactly the
    # requests this test sent (the last /metrics, the chat, the admin reads): no request of
    # its own, to the admin API or anywhere.
    after = state(security_api)
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert after[2] == before[2] + 4
    # And nothing was read from the filesystem into the answer.
    assert "root:" not in response.text


def test_a_generation_request_carries_no_tools_or_credentials() -> None:
    """What the model is given, whatever the engine: messages, one adapter name, sampling and
    an output schema. Nothing it returns is executed; a new field here needs a review."""
    assert set(GenerationRequest.model_fields) == {"messages", "adapter", "sampling", "json_schema"}


def test_the_answer_cannot_switch_the_adapter_of_later_requests(
    security_api: SecurityApi,
) -> None:
    asked = len(security_api.backend.requests)
    for stream in (False, True):
        response = ask(security_api, stream=stream)
        assert response.status_code == 200, response.text
    completion = security_api.user(
        "POST",
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": QUESTION}]},
    )
    assert completion.json()["choices"][0]["message"]["content"] == "PWNED"
    adapters = {r.adapter for r in security_api.backend.requests[asked:]}
    assert adapters == {security_api.refs["tone"]}


def test_a_caller_cannot_pick_an_adapter_the_route_does_not_allow(
    security_api: SecurityApi,
) -> None:
    """Only the route's configuration opens other adapters (overrides.adapters), and the
    document is not a caller: even the caller is refused here."""
    asked = len(security_api.backend.requests)
    for adapter in ("secret", security_api.refs["secret"], "../secret"):
        response = ask(security_api, adapter=adapter)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert len(security_api.backend.requests) == asked
