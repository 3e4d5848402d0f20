"""Qdrant's failures become domain errors by meaning: the embedded store for what it can
produce, a loopback server answering like Qdrant (tests/fixtures/fake_qdrant.py) for the rest,
both through the real qdrant-client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from ingest.store import open_qdrant, qdrant_errors
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


def test_embedded_missing_collection_is_not_found_naming_how_to_create_it(
    settings: Settings, qdrant: QdrantClient
) -> None:
    for call in (
        lambda: qdrant.count("gone"),
        lambda: qdrant.scroll("gone"),
        lambda: qdrant.query_points("gone", query=[0.1, 0.2]),
        lambda: qdrant.upsert("gone", points=[]),
    ):
        with pytest.raises(NotFound) as caught, qdrant_errors(settings):
            call()
        assert str(caught.value) == (
            "collection 'gone' does not exist; create it with "
            "`ragtune ingest PATH --collection gone`"
        )


def test_embedded_vectors_of_another_schema_are_a_config_mismatch(
    settings: Settings, qdrant: QdrantClient
) -> None:
    qdrant.create_collection(
        "other", vectors_config={"v": models.VectorParams(size=2, distance=models.Distance.DOT)}
    )
    with pytest.raises(ConfigMismatch, match="--reindex"), qdrant_errors(settings):
        qdrant.query_points("other", query=[0.1, 0.2], using="dense")


def test_other_value_errors_are_not_taken_for_qdrant_ones(settings: Settings) -> None:
    with pytest.raises(ValueError, match="unrelated"), qdrant_errors(settings):
        raise ValueError("unrelated")


@pytest.fixture
def server(settings: Settings) -> Iterator[FakeQdrant]:
    with fake_qdrant(settings) as fake:
        yield fake


@pytest.fixture
def remote(server: FakeQdrant, tmp_path: Path) -> Iterator[tuple[Settings, QdrantClient]]:
    # Sub-second: 0.5 s once became int(0.5) == 0, and every request failed at once.
    settings = Settings(data_dir=tmp_path / "data", qdrant={"url": server.url, "timeout_s": 0.5})
    client = open_qdrant(settings)
    yield settings, client
    client.close()


def test_a_sub_second_timeout_reaches_the_client_as_a_working_timeout(
    remote: tuple[Settings, QdrantClient],
) -> None:
    settings, client = remote
    with qdrant_errors(settings):
        assert client.count("docs").count == 0
        assert client.scroll("docs")[0] == []


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
    remote: tuple[Settings, QdrantClient],
    status: int,
    message: str,
    plain: bool,
    error: type[RagtuneError],
    says: str,
) -> None:
    settings, client = remote
    server.fail(status, message, plain=plain)
    with pytest.raises(RagtuneError) as caught, qdrant_errors(settings):
        client.scroll("docs")
    assert type(caught.value) is error
    assert says in str(caught.value)
