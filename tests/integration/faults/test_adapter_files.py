"""An adapter version's weights damaged on disk (truncated, or bytes flipped in place) in the
registry's store: every load checks the files against the sha256 recorded at registration, so
the damaged version is refused by file name, with the command that restores it, while the
alias keeps serving the version it had and other routes keep answering. Registering the
original folder again restores the files (the same version) without a restart.

The embedded engine with the tiny model: without the check, flipped bytes load silently and
serve other weights (safetensors has no checksum of its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.registry import REGISTRY_FILE, Registry
from engine.lora import WEIGHTS_FILE
from ragtune.settings import Settings
from tests.conftest import TinyModel
from tests.fixtures.api import admin_headers, api_settings, running_app
from tests.fixtures.scripted_backend import ScriptedBackend
from tests.fixtures.tiny_model import build_lora
from tests.integration.service.hotswap.swapping import ALIAS, ask, flip, register, status
from tests.integration.service.hotswap.swapping import ROUTES as SWAP_ROUTES

# The hot-swap tests' `tone` route, and one on the base model that must keep serving.
ROUTES = f"""{SWAP_ROUTES}\
  plain:
    kind: chat
    prompt: {{user: '{{question}}'}}
    generation: {{max_tokens: 4, temperature: 0.0}}
"""


def flip_bytes(path: Path) -> None:
    """Overwrite 64 bytes in the middle of the tensor data, keeping the size."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.chmod(0o644)  # stored versions are read-only; a disk fault does not care
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


DAMAGE: dict[str, Callable[[Path], None]] = {"flipped bytes": flip_bytes, "truncated": truncate}


def settings_for(home: Path, model: Path) -> Settings:
    """The routes above, and adapters a and b staged under `<adapter root>/incoming/`."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "routes.yaml").write_text(ROUTES)
    settings = api_settings(home, model, api={"routes_file": home / "routes.yaml"})
    for name, seed in (("a", 1), ("b", 2)):
        build_lora(model, settings.adapters_root() / "incoming" / name, rank=8, seed=seed)
    return settings


def registry_of(settings: Settings) -> Registry:
    return Registry(settings.adapters_root(), None, max_rank=16, max_bytes=10**9)


def weights(settings: Settings, ref: str) -> Path:
    name, version = ref.split("@")
    return settings.adapters_root() / "store" / name / version / WEIGHTS_FILE


def plain(client: TestClient) -> None:
    body = {"route": "plain", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/chat", json=body)
    assert response.status_code == 200, response.text


def refused(response: Any, path: Path) -> None:
    """A clear refusal: 422, naming the damaged file and the command that restores it."""
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert str(path) in message, message
    assert "is damaged on disk" in message
    assert "`ragtune adapters register PATH --name tone`" in message


@pytest.fixture
def served(tiny_model: TinyModel, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = settings_for(tmp_path, tiny_model.path)
    with running_app(settings) as client:
        yield client, settings


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_version_is_refused_at_flip_and_restored_by_registering_again(
    served: tuple[TestClient, Settings], damage: str
) -> None:
    client, settings = served
    a = register(client, "a", alias=ALIAS)
    answer_a = ask(client)
    assert answer_a.ok, answer_a
    b = register(client, "b")
    damaged = weights(settings, b)
    DAMAGE[damage](damaged)
    registry_file = settings.adapters_root() / REGISTRY_FILE
    before = registry_file.read_bytes()

    flipped = client.put(f"/admin/aliases/{ALIAS}", json={"target": b}, headers=admin_headers())
    refused(flipped, damaged)
    refused(client.post(f"/admin/adapters/{b}/load", headers=admin_headers()), damaged)
    # Nothing changed: the registry file, the alias, and what answers.
    assert registry_file.read_bytes() == before
    assert status(client)["active"] == {ALIAS: a}
    again = ask(client)
    assert (again.adapter, again.text) == (a, answer_a.text)
    plain(client)

    # The original folder registered again: the same version, its files whole again.
    assert register(client, "b") == b
    source = settings.adapters_root() / "incoming" / "b" / WEIGHTS_FILE
    assert damaged.read_bytes() == source.read_bytes()
    flip(client, b)
    answer_b = ask(client)
    assert answer_b.ok, answer_b
    assert answer_b.adapter == b
    assert answer_b.text != answer_a.text


def test_a_damaged_version_at_start_up_is_refused_and_restored_without_a_restart(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, tiny_model.path)
    registry = registry_of(settings)
    source = settings.adapters_root() / "incoming" / "a"
    a = registry.register(source, ALIAS).ref
    registry.set_alias(ALIAS, a)
    truncate(weights(settings, a))
    revision = registry.revision()

    with running_app(settings) as client:
        assert client.get("/healthz").status_code == 200
        plain(client)  # the routes without the adapter answer
        answer = client.post(
            "/v1/chat", json={"route": ALIAS, "messages": [{"role": "user", "content": "hi"}]}
        )
        refused(answer, weights(settings, a))
        current = status(client)
        assert ALIAS not in current["active"]
        assert current["drift"]
        assert registry.revision() == revision

        registry.register(source, ALIAS)  # as `ragtune adapters register` in a terminal
        deadline = time.monotonic() + 15
        while (answered := ask(client)).status != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answered.ok, answered
        assert answered.adapter == a
        assert registry.revision() == revision  # restoring files is not a registry change


def test_a_backend_that_lost_a_damaged_version_keeps_serving_the_other_routes(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    """A version served from memory stays served when its files are damaged; a replica that
    restarts cannot load it again, and is refused by name, not taken out of rotation."""
    replica = ScriptedBackend(lambda r: f"answer from {r.adapter}")
    settings = settings_for(tmp_path, tiny_model.path)
    with running_app(settings, lambda _: [replica]) as client:
        a = register(client, "a", alias=ALIAS)
        flip_bytes(weights(settings, a))
        assert ask(client).text == f"answer from {a}"  # in the engine's memory still

        replica.adapters.clear()  # restarted: it holds nothing
        refused_answer = client.post(
            "/v1/chat", json={"route": ALIAS, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert refused_answer.status_code in (404, 422), refused_answer.text
        time.sleep(3 * settings.adapters.sync_interval_s)  # reconciliations meanwhile
        plain(client)
        current = status(client)
        member = current["backends"][0]
        assert member["up"], member
        assert member["missing"] == [a]
        assert "is damaged on disk" in (member["error"] or ""), member
        assert current["drift"]
