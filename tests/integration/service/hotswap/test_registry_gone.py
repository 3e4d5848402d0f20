"""The registry's file disappearing under a running API (its volume unmounted, a shared disk
gone away) does not retire every alias: the API keeps serving what it read last, says why in
/admin/status, and follows the registry again once the file is back."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import TinyModel
from tests.fixtures.api import admin_headers, running_app
from tests.integration.service.hotswap.swapping import ALIAS, ask, register, swap_settings
from tests.integration.service.hotswap.test_reconcile import Replica


def test_a_vanished_registry_keeps_the_aliases_served(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    engine = Replica("vllm")
    settings = swap_settings(
        tmp_path, tiny_model.path, qdrant={"path": ":memory:"}, adapters={"sync_interval_s": 0.2}
    )
    registry_file = settings.adapters_root() / "registry.json"
    with running_app(settings, lambda _: [engine]) as client:
        a = register(client, "a", alias=ALIAS)
        saved = registry_file.read_bytes()
        registry_file.unlink()
        time.sleep(1.0)  # several syncs see it gone
        for stream in (False, True):
            answer = ask(client, stream=stream)
            assert answer.ok, answer
            assert answer.adapter == a
        assert a in engine.adapters  # not unloaded
        status = client.get("/admin/status", headers=admin_headers())
        assert status.status_code == 503, status.text
        assert "registry.json" in status.text
        assert "disappeared" in status.text
        assert "mounted" in status.text

        registry_file.write_bytes(saved)
        status = client.get("/admin/status", headers=admin_headers())
        assert status.status_code == 200, status.text
        assert status.json()["active"] == {ALIAS: a}
        assert ask(client).adapter == a
