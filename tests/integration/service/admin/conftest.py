"""One real API for the admin tests (tiny model on the embedded backend, admin token set),
with helpers that stage adapter folders under the adapter root and read the audit log."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from ragtune.settings import Settings
from tests.conftest import TinyModel
from tests.fixtures.api import admin_headers, api_settings, running_app

if TYPE_CHECKING:
    # What TestClient returns, as starlette types it.
    from httpx2 import Response

# Large enough for a zipped tiny adapter (~140 kB), small enough to overflow cheaply.
MAX_UPLOAD_BYTES = 400_000
# Above the rank-32 adapter (~540 kB), so it is refused for its rank, not its size.
MAX_ADAPTER_BYTES = 1_000_000
ACTOR = "admin@testclient"  # TestClient's client host
ROUTES = """\
routes:
  tone:
    kind: chat
    adapter: tone
    prompt: {user: '{question}'}
  cli-tone:
    kind: chat
    adapter: cli-tone
    prompt: {user: '{question}'}
  picker:
    kind: chat
    prompt: {user: '{question}'}
    overrides: {adapters: [base, tone-pick]}
"""


@dataclass
class AdminApi:
    """The running app and where its registry lives."""

    client: TestClient
    settings: Settings
    root: Path  # the adapter root: paths in POST /admin/adapters are relative to it
    model: TinyModel
    _names: Iterator[int] = field(default_factory=itertools.count)

    def unique(self, stem: str) -> str:
        """A name no other test uses (the app and its registry are shared)."""
        return f"{stem}-{next(self._names)}"

    def stage(self, source: str | Path = "alpha", name: str | None = None) -> str:
        """Copy an adapter folder (a tiny_model adapter's key, or a path) to
        `<root>/incoming/<name>`; return the path relative to the root."""
        src = self.model.adapters[source] if isinstance(source, str) else source
        rel = f"incoming/{name or self.unique(Path(src).name)}"
        shutil.copytree(src, self.root / rel)
        return rel

    def register(self, rel: str, name: str, **extra: Any) -> dict[str, Any]:
        response = self.client.post(
            "/admin/adapters", json={"path": rel, "name": name, **extra}, headers=admin_headers()
        )
        assert response.status_code == 201, response.text
        record: dict[str, Any] = response.json()["adapter"]
        return record

    def audit(self) -> list[dict[str, Any]]:
        response = self.client.get("/admin/audit?limit=1000", headers=admin_headers())
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["entries"]
        return entries

    def store_names(self) -> set[str]:
        store = self.root / "store"
        return {p.name for p in store.iterdir()} if store.is_dir() else set()

    def leftovers(self) -> list[Path]:
        """Anything left in the upload scratch and the registry's staging folder."""
        return [
            entry
            for folder in (self.root / ".uploads", self.root / "tmp")
            if folder.is_dir()
            for entry in folder.iterdir()
        ]


@pytest.fixture(scope="package")
def admin_api(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AdminApi]:
    home = tmp_path_factory.mktemp("admin")
    routes = home / "routes.yaml"
    routes.write_text(ROUTES)
    settings = api_settings(
        home,
        tiny_model.path,
        api={"routes_file": routes},
        admin={"max_upload_bytes": MAX_UPLOAD_BYTES},
        adapters={"max_adapter_bytes": MAX_ADAPTER_BYTES},
        # Every test points aliases of its own (the admin API cannot remove them), and each
        # keeps a version loaded.
        llm={"max_loras": 64},
    )
    root = settings.adapters_root()
    (root / "incoming").mkdir(parents=True)
    with running_app(settings) as client:
        yield AdminApi(client=client, settings=settings, root=root, model=tiny_model)


def error_message(response: Response) -> str:
    """The OpenAI-shaped error's message (asserting the shape on the way)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    message: str = body["error"]["message"]
    return message
