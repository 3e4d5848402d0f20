"""Alias flips and rollbacks seen by a chat route on that alias, loading, unloading and
deleting versions, backend status, the audit log, and flips made by the CLI on the shared
registry, all through HTTP against the tiny model on the embedded backend."""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from adapters.registry import Registry
from cli.main import main as ragtune_cli
from ragtune.errors import InvalidInput
from tests.fixtures.api import admin_headers
from tests.integration.service.admin.conftest import (
    ACTOR,
    MAX_ADAPTER_BYTES,
    AdminApi,
    error_message,
)

if TYPE_CHECKING:
    from httpx2 import Response

H = admin_headers()
FOLLOW_TIMEOUT_S = 10.0


def chat(admin_api: AdminApi, route: str) -> dict[str, Any]:
    response = admin_api.client.post(
        "/v1/chat",
        json={
            "route": route,
            "messages": [{"role": "user", "content": "Say something kind."}],
            "max_tokens": 8,
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def status(admin_api: AdminApi) -> dict[str, Any]:
    response = admin_api.client.get("/admin/status", headers=H)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def loaded(admin_api: AdminApi) -> set[str]:
    return set(status(admin_api)["backends"][0]["loaded"])


def eventually(check: Callable[[], bool], what: str, timeout_s: float = FOLLOW_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(0.1)


def two_versions(admin_api: AdminApi, stem: str, **first: Any) -> tuple[str, str]:
    """Register alpha and beta as two versions of one new adapter name; their refs."""
    name = admin_api.unique(stem)
    one = admin_api.register(admin_api.stage("alpha"), name, **first)
    two = admin_api.register(admin_api.stage("beta"), name)
    return f"{name}@{one['version']}", f"{name}@{two['version']}"


def put_alias(admin_api: AdminApi, alias: str, target: str) -> Response:
    return admin_api.client.put(f"/admin/aliases/{alias}", json={"target": target}, headers=H)


def point(admin_api: AdminApi, alias: str, target: str) -> None:
    response = put_alias(admin_api, alias, target)
    assert response.status_code == 200, response.text


# -- flip and rollback ----------------------------------------------------------------------


def test_flip_and_rollback_change_what_the_route_serves(admin_api: AdminApi) -> None:
    old, new = two_versions(admin_api, "tone", alias="tone")
    first = chat(admin_api, "tone")
    assert first["adapter"] == old

    response = put_alias(admin_api, "tone", new)
    assert response.status_code == 200, response.text
    assert response.json()["target"] == new
    assert response.json()["previous"] == old
    flipped = chat(admin_api, "tone")
    assert flipped["adapter"] == new
    # Other weights, so (greedy decoding) another answer: the flip is not just a label.
    assert flipped["answer"] != first["answer"]
    # The old version is drained and unloaded; the new one stays.
    eventually(lambda: old not in loaded(admin_api), f"unloading {old}")
    assert new in loaded(admin_api)

    response = admin_api.client.post("/admin/aliases/tone/rollback", headers=H)
    assert response.status_code == 200, response.text
    assert (response.json()["target"], response.json()["previous"]) == (old, new)
    back = chat(admin_api, "tone")
    assert back["adapter"] == old
    assert back["answer"] == first["answer"]

    # A second rollback undoes the first.
    response = admin_api.client.post("/admin/aliases/tone/rollback", headers=H)
    assert response.status_code == 200, response.text
    assert chat(admin_api, "tone")["adapter"] == new

    listing = admin_api.client.get("/admin/adapters", headers=H).json()
    assert listing["aliases"]["tone"]["target"] == new
    assert listing["aliases"]["tone"]["previous"] == old


def test_flip_to_the_current_target_changes_nothing(admin_api: AdminApi) -> None:
    old, _ = two_versions(admin_api, "same")
    alias = admin_api.unique("same-alias")
    first = put_alias(admin_api, alias, old).json()
    revision = admin_api.client.get("/admin/adapters", headers=H).json()["revision"]
    again = put_alias(admin_api, alias, old)
    assert again.status_code == 200, again.text
    assert again.json() == first
    assert admin_api.client.get("/admin/adapters", headers=H).json()["revision"] == revision


def test_alias_may_target_another_alias(admin_api: AdminApi) -> None:
    # As with `ragtune adapters alias A B`: B's current target.
    ref, _ = two_versions(admin_api, "chain")
    first, second = admin_api.unique("first"), admin_api.unique("second")
    point(admin_api, first, ref)
    response = put_alias(admin_api, second, first)
    assert response.status_code == 200, response.text
    assert response.json()["target"] == ref
    assert status(admin_api)["active"][second] == ref


def test_rollback_without_a_previous_version(admin_api: AdminApi) -> None:
    ref, _ = two_versions(admin_api, "solo")
    alias = admin_api.unique("solo-alias")
    point(admin_api, alias, ref)
    response = admin_api.client.post(f"/admin/aliases/{alias}/rollback", headers=H)
    assert response.status_code == 422, response.text
    assert "no previous version to roll back to" in error_message(response)
    assert status(admin_api)["active"][alias] == ref


def test_rollback_of_an_unknown_alias(admin_api: AdminApi) -> None:
    response = admin_api.client.post("/admin/aliases/never-made/rollback", headers=H)
    assert response.status_code == 404, response.text
    assert "'never-made' does not exist" in error_message(response)


@pytest.mark.parametrize(
    ("target", "code", "problem"),
    [
        ("ghost@0123456789abcdef", 404, "no adapter ghost@0123456789abcdef"),
        ("no-such-alias", 404, "no alias 'no-such-alias'"),
        ("ghost@xyz", 422, "'ghost@xyz' is not an adapter ref"),
    ],
)
def test_alias_to_an_unknown_target(
    admin_api: AdminApi, target: str, code: int, problem: str
) -> None:
    alias = admin_api.unique("nowhere")
    response = put_alias(admin_api, alias, target)
    assert response.status_code == code, response.text
    assert problem in error_message(response)
    assert alias not in admin_api.client.get("/admin/adapters", headers=H).json()["aliases"]


def test_bad_alias_name_loads_nothing(admin_api: AdminApi) -> None:
    _, ref = two_versions(admin_api, "badname")
    response = put_alias(admin_api, "no%20such", ref)
    assert response.status_code == 422, response.text
    assert "alias 'no such' is not allowed" in error_message(response)
    assert ref not in loaded(admin_api)


# -- load, unload, delete -------------------------------------------------------------------


def test_delete_of_an_aliased_version_names_the_alias(admin_api: AdminApi) -> None:
    old, new = two_versions(admin_api, "del-alias")
    alias = admin_api.unique("keeper")
    point(admin_api, alias, old)
    response = admin_api.client.delete(f"/admin/adapters/{old}", headers=H)
    assert response.status_code == 422, response.text
    assert f"alias {alias}" in error_message(response)
    # Still the rollback target once the alias moves on: still refused, naming the alias.
    point(admin_api, alias, new)
    eventually(lambda: old not in loaded(admin_api), f"unloading {old}")
    response = admin_api.client.delete(f"/admin/adapters/{old}", headers=H)
    assert response.status_code == 422, response.text
    assert f"alias {alias}" in error_message(response)
    assert "rollback target" in error_message(response)
    assert (admin_api.root / "store" / old.replace("@", "/")).is_dir()
    # The same rule, in the same words, as the registry's own (the CLI's `delete`).
    registry = Registry(admin_api.root, None, max_rank=64, max_bytes=MAX_ADAPTER_BYTES)
    with pytest.raises(InvalidInput) as caught:
        registry.delete(old)
    assert error_message(response) == str(caught.value)


def test_pinned_version_must_be_unloaded_before_delete(admin_api: AdminApi) -> None:
    ref, _ = two_versions(admin_api, "pinned")
    response = admin_api.client.post(f"/admin/adapters/{ref}/load", headers=H)
    assert response.status_code == 204, response.text
    assert ref in loaded(admin_api)
    assert ref not in status(admin_api)["active"].values()

    response = admin_api.client.delete(f"/admin/adapters/{ref}", headers=H)
    assert response.status_code == 422, response.text
    assert f"{ref} is loaded; unload it first" in error_message(response)

    response = admin_api.client.post(f"/admin/adapters/{ref}/unload", headers=H)
    assert response.status_code == 204, response.text
    # The unload drains in the background (a version could still be answering requests).
    eventually(lambda: ref not in loaded(admin_api), f"unloading {ref}")
    response = admin_api.client.delete(f"/admin/adapters/{ref}", headers=H)
    assert response.status_code == 204, response.text
    assert not (admin_api.root / "store" / ref.replace("@", "/")).exists()
    listing = admin_api.client.get("/admin/adapters", headers=H).json()
    assert ref not in {f"{r['name']}@{r['version']}" for r in listing["adapters"]}
    assert admin_api.leftovers() == []
    response = admin_api.client.delete(f"/admin/adapters/{ref}", headers=H)
    assert response.status_code == 404, response.text


def test_unload_of_an_aliased_version_is_refused(admin_api: AdminApi) -> None:
    ref, _ = two_versions(admin_api, "served")
    alias = admin_api.unique("served-alias")
    point(admin_api, alias, ref)
    response = admin_api.client.post(f"/admin/adapters/{ref}/unload", headers=H)
    assert response.status_code == 422, response.text
    assert f"served by alias '{alias}'" in error_message(response)
    assert ref in loaded(admin_api)


def test_load_twice_then_unload(admin_api: AdminApi) -> None:
    ref, _ = two_versions(admin_api, "twice")
    for _ in range(2):
        response = admin_api.client.post(f"/admin/adapters/{ref}/load", headers=H)
        assert response.status_code == 204, response.text
    assert admin_api.client.post(f"/admin/adapters/{ref}/unload", headers=H).status_code == 204
    eventually(lambda: ref not in loaded(admin_api), f"unloading {ref}")
    response = admin_api.client.post(f"/admin/adapters/{ref}/unload", headers=H)
    assert response.status_code == 404, response.text
    assert f"{ref} is not loaded" in error_message(response)


@pytest.mark.parametrize(
    ("method", "suffix"), [("POST", "/load"), ("POST", "/unload"), ("DELETE", "")]
)
def test_unknown_and_malformed_refs(admin_api: AdminApi, method: str, suffix: str) -> None:
    response = admin_api.client.request(
        method, f"/admin/adapters/ghost@0123456789abcdef{suffix}", headers=H
    )
    assert response.status_code == 404, response.text
    assert "ghost@0123456789abcdef" in error_message(response)
    response = admin_api.client.request(method, f"/admin/adapters/not-a-ref{suffix}", headers=H)
    assert response.status_code in (404, 422), response.text
    assert "not-a-ref" in error_message(response)


# -- status ---------------------------------------------------------------------------------


def test_status_matches_the_registry(admin_api: AdminApi) -> None:
    ref, _ = two_versions(admin_api, "stat")
    alias = admin_api.unique("stat-alias")
    point(admin_api, alias, ref)
    body = status(admin_api)
    listing = admin_api.client.get("/admin/adapters", headers=H).json()
    assert body["revision"] == listing["revision"]
    assert body["registry"] == {a: r["target"] for a, r in listing["aliases"].items()}
    assert body["active"] == body["registry"]
    assert body["active"][alias] == ref
    assert body["inflight"] == {}
    [backend] = body["backends"]
    assert backend["index"] == 0
    assert backend["name"] == "embedded"
    assert backend["up"] is True
    assert backend["error"] is None
    assert set(body["registry"].values()) <= set(backend["loaded"])
    assert backend["missing"] == []
    assert backend["extra"] == []
    assert body["drift"] is False
    # The embedded store by default: Qdrant Edge in the data dir, nothing left to migrate.
    store = body["store"]
    assert (store["kind"], store["where"]) == ("edge", admin_api.settings.qdrant_location())
    assert store["not_migrated"] == []
    assert all(c["points"] >= 0 for c in store["collections"])


# -- audit ----------------------------------------------------------------------------------


def test_every_change_is_in_the_audit_log(admin_api: AdminApi) -> None:
    since = datetime.now(UTC).isoformat()
    name = admin_api.unique("audited")
    alias = admin_api.unique("audited-alias")
    rel_one, rel_two = admin_api.stage("alpha"), admin_api.stage("beta")
    one = admin_api.register(rel_one, name)
    two = admin_api.register(rel_two, name)
    ref_one, ref_two = f"{name}@{one['version']}", f"{name}@{two['version']}"
    big = admin_api.stage("too-big")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (admin_api.root / rel_one).iterdir():
            zf.write(path, path.name)
    client = admin_api.client
    calls = [
        client.post("/admin/adapters", json={"path": big, "name": name}, headers=H),
        client.post("/admin/adapters", json={"path": "../x", "name": name}, headers=H),
        client.post(
            "/admin/adapters/upload",
            params={"name": name},
            content=archive.getvalue(),
            headers=H,
        ),
        client.post("/admin/adapters/upload", params={"name": name}, content=b"", headers=H),
        client.post("/admin/adapters/upload", params={"name": name}, content=b"?", headers=H),
        put_alias(admin_api, alias, ref_one),
        put_alias(admin_api, alias, ref_two),
        client.post(f"/admin/aliases/{alias}/rollback", headers=H),
        client.post(f"/admin/adapters/{ref_one}/unload", headers=H),
        client.delete(f"/admin/adapters/{ref_one}", headers=H),
        client.post(f"/admin/adapters/{ref_two}/load", headers=H),
        client.post(f"/admin/adapters/{ref_two}/unload", headers=H),
        client.get("/admin/adapters", headers=H),
        client.get("/admin/status", headers=H),
        # Refused for the token: not the log's business (no actor to name).
        client.delete(f"/admin/adapters/{ref_one}", headers={"Authorization": "Bearer no"}),
    ]
    assert [c.status_code for c in calls] == [
        422, 422, 201, 400, 422, 200, 200, 200, 422, 422, 204, 204, 200, 200, 403,
    ]  # fmt: skip
    entries = [e for e in admin_api.audit() if e["time"] > since]
    assert {e["actor"] for e in entries} == {ACTOR}
    assert [(e["action"], e["target"], e["result"]) for e in entries] == [
        ("register", f"{name} from {rel_one}", "ok"),
        ("register", f"{name} from {rel_two}", "ok"),
        ("register", f"{name} from {big}", "refused"),
        ("register", f"{name} from ../x", "refused"),
        ("upload", name, "ok"),
        ("upload", name, "refused"),
        ("upload", name, "refused"),
        ("alias", f"{alias} -> {ref_one}", "ok"),
        ("alias", f"{alias} -> {ref_two}", "ok"),
        ("rollback", alias, "ok"),
        ("unload", ref_one, "refused"),
        ("delete", ref_one, "refused"),
        ("load", ref_two, "ok"),
        ("unload", ref_two, "ok"),
    ]
    details = [e["detail"] for e in entries if e["result"] == "refused"]
    assert "rank 32" in details[0]
    assert "contains '..'" in details[1]
    assert details[2] == "empty body"
    assert "neither a zip nor a tar" in details[3]
    assert "served by alias" in details[4]
    assert "still used by alias" in details[5]
    assert all(e["detail"] == "" for e in entries if e["result"] == "ok")
    times = [e["time"] for e in entries]
    assert times == sorted(times)


def test_audit_limit(admin_api: AdminApi) -> None:
    everything = admin_api.audit()
    assert len(everything) >= 2
    response = admin_api.client.get("/admin/audit?limit=2", headers=H)
    assert response.status_code == 200, response.text
    assert response.json()["entries"] == everything[-2:]
    for bad in ("0", "1001", "many"):
        response = admin_api.client.get(f"/admin/audit?limit={bad}", headers=H)
        assert response.status_code == 422, response.text
        assert "limit" in error_message(response)


# -- the CLI on the same registry -----------------------------------------------------------


def cli(admin_api: AdminApi, monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    for key in os.environ:
        if key.startswith("RAGTUNE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(admin_api.settings.data_dir))
    assert ragtune_cli(["adapters", *args]) == 0


def test_cli_flips_are_followed_by_the_running_app(
    admin_api: AdminApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin_api.settings.adapters.sync_interval_s == 0.5
    since = datetime.now(UTC).isoformat()
    old, new = two_versions(admin_api, "cli")
    point(admin_api, "cli-tone", old)
    assert chat(admin_api, "cli-tone")["adapter"] == old

    # Only the background sync can notice: chat re-reads the registry for unknown aliases
    # only, and /admin/status (which syncs) is not asked until it has happened.
    cli(admin_api, monkeypatch, "alias", "cli-tone", new)
    assert "cli-tone -> " + new in capsys.readouterr().out
    eventually(lambda: chat(admin_api, "cli-tone")["adapter"] == new, "following the CLI flip")
    body = status(admin_api)
    assert body["active"]["cli-tone"] == body["registry"]["cli-tone"] == new
    assert body["drift"] is False
    eventually(lambda: old not in loaded(admin_api), f"unloading {old}")

    cli(admin_api, monkeypatch, "rollback", "cli-tone")
    eventually(lambda: chat(admin_api, "cli-tone")["adapter"] == old, "following the rollback")

    # The admin API sees the CLI's entries in the shared audit log.
    cli_entries = [
        (e["action"], e["target"], e["result"])
        for e in admin_api.audit()
        if e["time"] > since and e["actor"].startswith("cli:")
    ]
    assert cli_entries == [("alias", "cli-tone", "ok"), ("rollback", "cli-tone", "ok")]

    # An alias removed by the CLI stops being served.
    cli(admin_api, monkeypatch, "unalias", "cli-tone")
    ask = {"route": "cli-tone", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    eventually(
        lambda: admin_api.client.post("/v1/chat", json=ask).status_code == 404,
        "following the removal",
    )
    response = admin_api.client.post("/v1/chat", json=ask)
    assert "adapter alias 'cli-tone' is not in the registry" in error_message(response)
    eventually(lambda: old not in loaded(admin_api), f"unloading {old}")


def test_remove_an_alias_no_route_uses(admin_api: AdminApi) -> None:
    ref, _ = two_versions(admin_api, "gone")
    alias = admin_api.unique("gone-alias")
    point(admin_api, alias, ref)
    response = admin_api.client.delete(f"/admin/aliases/{alias}", headers=H)
    assert response.status_code == 204, response.text
    assert alias not in status(admin_api)["active"]
    assert alias not in admin_api.client.get("/admin/adapters", headers=H).json()["aliases"]
    again = admin_api.client.delete(f"/admin/aliases/{alias}", headers=H)
    assert again.status_code == 404
    # The version it served is retired once drained, then it can be deleted.
    deadline = time.monotonic() + 10
    while ref in status(admin_api)["backends"][0]["loaded"]:
        assert time.monotonic() < deadline, "the unaliased version was never unloaded"
        time.sleep(0.1)


def test_an_alias_a_route_serves_cannot_be_removed(admin_api: AdminApi) -> None:
    response = admin_api.client.delete("/admin/aliases/tone", headers=H)
    assert response.status_code == 422
    assert "used by route 'tone'" in error_message(response)


def test_an_alias_a_route_allows_as_an_override_cannot_be_removed(admin_api: AdminApi) -> None:
    ref, _ = two_versions(admin_api, "pick")
    point(admin_api, "tone-pick", ref)
    response = admin_api.client.delete("/admin/aliases/tone-pick", headers=H)
    assert response.status_code == 422, response.text
    message = error_message(response)
    assert "alias 'tone-pick' is used by route 'picker'" in message
    assert "take it out of the routes file" in message
    assert "tone-pick" in admin_api.client.get("/admin/adapters", headers=H).json()["aliases"]
