"""Qdrant's failures as the API answers them, and a collection rebuilt or dropped while the
API serves (`ragtune ingest --reindex` in another terminal) noticed without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ingest.chunking import Chunker
from ingest.pipeline import Ingester, IngestOptions
from ragtune.settings import Settings
from service.state import AppState
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app
from tests.fixtures.fake_qdrant import FakeQdrant, fake_qdrant
from tests.fixtures.scripted_backend import ScriptedBackend

INDEX_REQUIRED = (
    'Bad request: Index required but not found for "file_type" of one of the following '
    "types: [keyword]. Help: Create an index for this key or use a different filter."
)


def ask(question: str = "How do apples grow?") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}], "top_k": 2}


@pytest.fixture(scope="module")
def served(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FakeQdrant, TestClient]]:
    root = tmp_path_factory.mktemp("qdrant-errors")
    probe = api_settings(root, tiny_model.path)
    with fake_qdrant(probe) as server:
        # A sub-second timeout: it must reach the client as one that lets requests through.
        settings = api_settings(root, tiny_model.path, qdrant={"url": server.url, "timeout_s": 0.5})
        with running_app(settings, lambda _: [ScriptedBackend()]) as client:
            yield server, client


@pytest.mark.parametrize(
    ("status", "message", "plain", "answer", "says"),
    [
        (404, "Not found: Collection `docs` doesn't exist!", False, 404,
         "collection 'docs' does not exist; create it with `ragtune ingest PATH --collection"),
        (400, INDEX_REQUIRED, False, 409, "no payload index on 'file_type'"),
        (400, "Bad request: Wrong input: Unknown offset type", False, 422,
         "Qdrant refused the request: Bad request: Wrong input: Unknown offset type"),
        (401, "Must provide an API key or an Authorization bearer token", True, 502,
         "set RAGTUNE_QDRANT__API_KEY"),
        (403, "Forbidden: global access is required", False, 502, "RAGTUNE_QDRANT__API_KEY"),
        (500, "Service internal error: disk full", False, 503, "disk full"),
    ],
)  # fmt: skip
def test_qdrant_statuses_become_the_api_status_they_mean(
    served: tuple[FakeQdrant, TestClient],
    status: int,
    message: str,
    plain: bool,
    answer: int,
    says: str,
) -> None:
    server, client = served
    server.fail(status, message, plain=plain)
    try:
        response = client.post("/v1/chat", json=ask())
    finally:
        server.succeed()
    assert response.status_code == answer, response.text
    assert says in response.json()["error"]["message"]
    # Only an outage is worth retrying.
    assert ("Retry-After" in response.headers) == (answer == 503)


def test_a_healthy_server_answers_with_a_sub_second_timeout(
    served: tuple[FakeQdrant, TestClient],
) -> None:
    _, client = served
    response = client.post("/v1/chat", json=ask())
    assert response.status_code == 200, response.text
    assert response.json()["sources"] == []


def _reindex(client: TestClient, settings: Settings, docs: Path, reindex: bool = True) -> None:
    """`ragtune ingest docs --reindex` on the app's own embedded Qdrant (one process may hold
    an embedded store; the app is idle between requests)."""
    state: AppState = client.app_state["services"]
    retrieval = state.retrieval
    chunker = Chunker(
        retrieval.embedder.tokenizer, retrieval.embedder.token_limit, settings.chunking
    )
    Ingester(state.store, retrieval.embedder, retrieval.sparse, chunker).run(
        [docs], IngestOptions(collection="docs", reindex=reindex)
    )


def test_a_rebuilt_collection_is_served_without_a_restart(
    tmp_path: Path, tiny_model: TinyModel
) -> None:
    settings = api_settings(tmp_path, tiny_model.path)
    # Built with other BM25 settings: hybrid questions are refused until it is rebuilt.
    ingest_corpus(api_settings(tmp_path, tiny_model.path, sparse={"k1": 0.9}))
    comets = tmp_path / "comets"
    comets.mkdir()
    (comets / "comets.txt").write_text("Comets grow tails of gas and dust near the sun.")
    with running_app(settings, lambda _: [ScriptedBackend()]) as client:
        refused = client.post("/v1/chat", json=ask())
        assert refused.status_code == 409, refused.text
        assert "sparse settings" in refused.json()["error"]["message"]

        _reindex(client, settings, comets)
        rebuilt = client.post("/v1/chat", json=ask("Why do comets have tails?"))
        assert rebuilt.status_code == 200, rebuilt.text
        assert [s["doc_id"] for s in rebuilt.json()["sources"]] == ["comets.txt"]

        # Dropped: a 404 naming it; re-created: answered again.
        client.app_state["services"].store.drop("docs")
        gone = client.post("/v1/chat", json=ask())
        assert gone.status_code == 404, gone.text
        assert "collection 'docs' does not exist" in gone.json()["error"]["message"]
        assert "ragtune ingest PATH --collection docs" in gone.json()["error"]["message"]
        _reindex(client, settings, comets, reindex=False)
        back = client.post("/v1/chat", json=ask("Why do comets have tails?"))
        assert back.status_code == 200, back.text
        assert [s["doc_id"] for s in back.json()["sources"]] == ["comets.txt"]
