"""The API on the session's vLLM server, for the hot-swap tests that need a real engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.vllm_cpu import VLLMServer
from tests.conftest import TinyModel
from tests.fixtures.api import running_app
from tests.integration.service.hotswap.swapping import unload_behind_the_back, vllm_settings


@pytest.fixture
def vllm_client(
    vllm_server: VLLMServer, tiny_model: TinyModel, tmp_path: Path
) -> Iterator[TestClient]:
    """The API on the session's vLLM server; the versions it loaded there are unloaded after,
    so the server's other users find it as before."""
    try:
        with running_app(vllm_settings(vllm_server, tmp_path, tiny_model.path)) as client:
            yield client
    finally:
        unload_behind_the_back(vllm_server)
