"""Qdrant's failures become domain errors by meaning, the same from every store: the embedded
stores (Qdrant Edge, qdrant-client's local mode) for what they can produce, a loopback server
answering like Qdrant (tests/fixtures/fake_qdrant.py) through the real qdrant-client for the
rest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client.models import SparseVector

from ingest.backends.base import NewPoint, Search, VectorStore
from ingest.backends.client import ClientStore
from ingest.backends.edge import EdgeStore
from ingest.backends.errors import client_errors
from ingest.store import open_store
from ragtune.errors import (
    ConfigMismatch,
    InvalidInput,
    NotFound,
    RagtuneError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from ragtune.settings import Settings
from tests.fixtures.fake_qdrant import FakeQdrant, fake_qdrant

INDEX_REQUIRED = (
    'Bad request: Index required but not found for "{}" of one of the following types: '
    "[keyword]. Help: Create an index for this key or use a different filter."
)


@pytest.fixture(params=["edge", "local"])
def embedded(request: pytest.FixtureRequest) -> Iterator[VectorStore]:
    store: VectorStore = (
        EdgeStore(":memory:") if request.param == "edge" else ClientStore.local(":memory:")
    )
    yield store
    store.close()


def _point(dim: int) -> NewPoint:
    return NewPoint(
        "5b0b7b8e-8f6c-4b8e-9a55-2f1f3c6d7e01", [0.1] * dim, SparseVector(indices=[], values=[]), {}
    )


def test_embedded_missing_collection_is_not_found_naming_how_to_create_it(
    embedded: VectorStore,
) -> None:
    for call in (
        lambda: embedded.count("gone"),
        lambda: embedded.scroll("gone", limit=10),
        lambda: embedded.search("gone", Search(mode="dense", limit=3, dense=[0.1, 0.2])),
        lambda: embedded.upsert("gone", [_point(2)]),
        lambda: embedded.manifest("gone"),
    ):
        with pytest.raises(NotFound) as caught:
            call()
        assert str(caught.value).startswith("collection 'gone' does not exist")
        assert str(caught.value).endswith("create it with `ragtune ingest PATH --collection gone`")


def test_embedded_vectors_of_another_size_are_a_config_mismatch(embedded: VectorStore) -> None:
    embedded.create("other", 2, {"schema": 1})
    with pytest.raises(ConfigMismatch, match="--reindex"):
        embedded.search("other", Search(mode="dense", limit=3, dense=[0.1, 0.2, 0.3]))
    with pytest.raises(ConfigMismatch, match="--reindex"):
        embedded.upsert("other", [_point(3)])


def test_other_value_errors_are_not_taken_for_qdrant_ones() -> None:
    with pytest.raises(ValueError, match="unrelated"), client_errors("here"):
        raise ValueError("unrelated")


def test_a_second_process_on_the_embedded_store_is_told_to_use_a_server(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = open_store(settings)
    try:
        with pytest.raises(InvalidInput, match=r"in use by another process.*RAGTUNE_QDRANT__URL"):
            open_store(settings)
    finally:
        first.close()
    open_store(settings).close()


@pytest.fixture
def server(settings: Settings) -> Iterator[FakeQdrant]:
    with fake_qdrant(settings) as fake:
        yield fake


@pytest.fixture
def remote(server: FakeQdrant, tmp_path: Path) -> Iterator[VectorStore]:
    # Sub-second: 0.5 s once became int(0.5) == 0, and every request failed at once.
    settings = Settings(data_dir=tmp_path / "data", qdrant={"url": server.url, "timeout_s": 0.5})
    store = open_store(settings)
    yield store
    store.close()


def test_a_sub_second_timeout_reaches_the_client_as_a_working_timeout(
    remote: VectorStore,
) -> None:
    assert remote.kind == "server"
    assert remote.count("docs") == 0
    assert remote.scroll("docs", limit=10)[0] == []


@pytest.mark.parametrize(
    ("status", "message", "plain", "error", "says"),
    [
        (404, "Not found: Collection `docs` doesn't exist!", False, NotFound,
         "collection 'docs' does not exist; create it with `ragtune ingest PATH --collection"),
        (400, INDEX_REQUIRED.format("file_type"), False, ConfigMismatch,
         "no payload index on 'file_type', which ragtune creates"),
        (400, INDEX_REQUIRED.format("meta.year"), False, InvalidInput,
         "filtering on 'meta.year' needs a payload index"),
        (400, "Wrong input: Vector dimension error: expected dim: 384, got 3", False,
         ConfigMismatch, "Vector dimension error: expected dim: 384, got 3"),
        (400, "Bad request: Wrong input: Unknown offset type", False, InvalidInput,
         "Qdrant refused the request: Bad request: Wrong input: Unknown offset type"),
        (401, "Must provide an API key or an Authorization bearer token", True,
         UpstreamRejected, "set RAGTUNE_QDRANT__API_KEY"),
        (403, "Forbidden: global access is required", False, UpstreamRejected,
         "refused the API key (403 Forbidden: Forbidden: global access is required)"),
        (500, "Service internal error: disk full", False, UpstreamUnavailable,
         "failed (500 Internal Server Error: Service internal error: disk full)"),
        (503, "Service unavailable", False, UpstreamUnavailable, "check that it is healthy"),
    ],
)  # fmt: skip
def test_server_statuses_are_classified_by_meaning(
    server: FakeQdrant,
    remote: VectorStore,
    status: int,
    message: str,
    plain: bool,
    error: type[RagtuneError],
    says: str,
) -> None:
    server.fail(status, message, plain=plain)
    with pytest.raises(RagtuneError) as caught:
        remote.scroll("docs", limit=10)
    assert type(caught.value) is error
    assert says in str(caught.value)
