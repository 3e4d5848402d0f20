"""Collections ragtune creates on a Qdrant server carry the cluster layout from the settings
(`qdrant.shard_number`, `replication_factor`, `write_consistency_factor`), and so do the
collections `--reindex` builds; unset, the server's defaults apply.

No Qdrant server can run here, so the requests are read by a recording HTTP server that
answers as Qdrant does (a fake at the boundary); the same code path with no layout runs
against the local mode in test_congruence.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from ingest.backends.client import ClientStore
from ingest.store import open_store
from ragtune.settings import QdrantSettings, Settings


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    def created(self) -> list[dict[str, Any]]:
        """The bodies of the collection-creating requests (PUT /collections/NAME)."""
        return [
            body
            for method, path, body in self.requests
            if method == "PUT" and path.count("/") == 2 and path.startswith("/collections/")
        ]


@contextmanager
def recording_qdrant() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            path = self.path.split("?")[0]
            recorder.requests.append(("PUT", path, body))
            if path.endswith("/index"):
                result: Any = {"operation_id": 1, "status": "completed"}
            else:
                result = True
            data = json.dumps({"result": result, "status": "ok", "time": 0.0}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    finally:
        server.shutdown()
        server.server_close()


def _store(url: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> ClientStore:
    for key, value in {"RAGTUNE_QDRANT__URL": url, **env}.items():
        monkeypatch.setenv(key, value)
    store = open_store(Settings())
    assert isinstance(store, ClientStore)
    return store


def test_a_collection_gets_the_cluster_layout_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with recording_qdrant() as (url, recorder):
        store = _store(
            url,
            monkeypatch,
            RAGTUNE_QDRANT__SHARD_NUMBER="6",
            RAGTUNE_QDRANT__REPLICATION_FACTOR="2",
            RAGTUNE_QDRANT__WRITE_CONSISTENCY_FACTOR="2",
        )
        store.create("docs", 384, {"schema": 1})
        store.create(store.staging_name("docs"), 384, {"schema": 1})  # what --reindex builds
    bodies = recorder.created()
    assert len(bodies) == 2
    for body in bodies:
        assert body["shard_number"] == 6
        assert body["replication_factor"] == 2
        assert body["write_consistency_factor"] == 2
        assert body["metadata"] == {"ragtune": {"schema": 1}}
    # The payload indexes follow each collection on a server.
    assert any(path.endswith("/index") for _, path, _ in recorder.requests)


def test_unset_the_server_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    with recording_qdrant() as (url, recorder):
        _store(url, monkeypatch).create("docs", 384, {"schema": 1})
    (body,) = recorder.created()
    for key in ("shard_number", "replication_factor", "write_consistency_factor"):
        assert body.get(key) is None


def test_a_write_consistency_above_the_copies_is_refused() -> None:
    with pytest.raises(ValidationError, match="replication_factor"):
        QdrantSettings(replication_factor=2, write_consistency_factor=3)
    with pytest.raises(ValidationError, match="at most to replication_factor"):
        QdrantSettings(write_consistency_factor=2)
    assert QdrantSettings(replication_factor=2, write_consistency_factor=2).replication_factor == 2
