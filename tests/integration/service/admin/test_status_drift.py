"""GET /admin/status when backends disagree with the registry: a replica down, one that
restarted empty (reloaded by the next reconciliation), one holding a version nobody manages.
Scripted backends stand in for engines, since the failures are what is under test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TinyModel
from tests.fixtures.api import admin_headers, api_settings, running_app
from tests.fixtures.scripted_backend import ScriptedBackend

H = admin_headers()
ROUTES = "routes:\n  tone:\n    kind: chat\n    adapter: tone\n    prompt: {user: '{question}'}\n"


@pytest.fixture(scope="module")
def replicas() -> list[ScriptedBackend]:
    return [ScriptedBackend("one"), ScriptedBackend("two")]


@pytest.fixture(scope="module")
def served(
    tiny_model: TinyModel,
    tmp_path_factory: pytest.TempPathFactory,
    replicas: list[ScriptedBackend],
) -> Iterator[tuple[TestClient, str]]:
    """The app on two scripted replicas, with alias `tone` on a registered version."""
    home = tmp_path_factory.mktemp("drift")
    (home / "routes.yaml").write_text(ROUTES)
    settings = api_settings(
        home,
        tiny_model.path,
        api={"routes_file": home / "routes.yaml"},
        adapters={"sync_interval_s": 60},  # only /admin/status reconciles here
    )
    shutil.copytree(tiny_model.adapters["alpha"], settings.adapters_root() / "incoming" / "a")
    with running_app(settings, lambda _: replicas) as client:
        response = client.post(
            "/admin/adapters",
            json={"path": "incoming/a", "name": "tone", "alias": "tone"},
            headers=H,
        )
        assert response.status_code == 201, response.text
        yield client, response.json()["alias"]["target"]


def status(client: TestClient) -> dict[str, Any]:
    response = client.get("/admin/status", headers=H)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_steady_state(served: tuple[TestClient, str], replicas: list[ScriptedBackend]) -> None:
    client, ref = served
    body = status(client)
    assert body["drift"] is False
    assert [b["name"] for b in body["backends"]] == ["scripted", "scripted"]
    for backend, replica in zip(body["backends"], replicas, strict=True):
        assert backend["up"] is True
        assert backend["loaded"] == [ref] == sorted(replica.adapters)
        assert (backend["missing"], backend["extra"], backend["error"]) == ([], [], None)


def test_a_replica_down_is_drift(
    served: tuple[TestClient, str], replicas: list[ScriptedBackend]
) -> None:
    client, ref = served
    replicas[1].healthy = False
    try:
        body = status(client)
        assert body["drift"] is True
        down = body["backends"][1]
        assert down["up"] is False
        assert down["error"] == "the scripted backend is down"
        assert body["backends"][0]["up"] is True
        # Requests still go to the replica that answers.
        chat = client.post(
            "/v1/chat", json={"route": "tone", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["adapter"] == ref
    finally:
        replicas[1].healthy = True
    assert status(client)["drift"] is False


def test_a_replica_restarted_empty_gets_its_adapters_back(
    served: tuple[TestClient, str], replicas: list[ScriptedBackend]
) -> None:
    client, ref = served
    replicas[0].adapters.clear()
    body = status(client)
    # This reconciliation found it missing and loaded it again.
    assert body["backends"][0]["missing"] == [ref]
    assert body["drift"] is True
    assert ref in replicas[0].adapters
    assert status(client)["drift"] is False


def test_unmanaged_versions_are_reported_not_unloaded(
    served: tuple[TestClient, str], replicas: list[ScriptedBackend], tmp_path: Path
) -> None:
    client, _ = served
    stray = "other@0123456789abcdef"
    replicas[1].adapters[stray] = tmp_path
    try:
        body = status(client)
        assert body["backends"][1]["extra"] == [stray]
        assert stray in replicas[1].adapters
    finally:
        del replicas[1].adapters[stray]
