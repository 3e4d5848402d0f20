"""One real API per module (tiny model, embedded Qdrant with the test corpus ingested)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TinyModel
from tests.fixtures.api import api_settings, ingest_corpus, running_app


@pytest.fixture(scope="module")
def client(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = api_settings(tmp_path_factory.mktemp("api"), tiny_model.path)
    ingest_corpus(settings)
    with running_app(settings) as client:
        yield client
