"""Which store `open_store` picks from settings, and the fallback where Edge is missing."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from ingest.backends.client import ClientStore
from ingest.backends.edge import EdgeStore
from ingest.store import open_store
from ragtune.settings import Settings


def test_the_embedded_default_is_qdrant_edge(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path))
    try:
        assert isinstance(store, EdgeStore)
        assert (store.kind, store.where) == ("edge", str(tmp_path / "qdrant"))
        assert store.in_process
    finally:
        store.close()


def test_local_mode_is_one_setting_away(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path, qdrant={"embedded": "local"}))
    try:
        assert isinstance(store, ClientStore)
        assert store.kind == "local"
    finally:
        store.close()


def test_a_server_url_means_the_server(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path, qdrant={"url": "http://127.0.0.1:9"}))
    try:
        assert (store.kind, store.where, store.in_process) == (
            "server",
            "http://127.0.0.1:9",
            False,
        )
    finally:
        store.close()


def test_without_an_edge_wheel_it_falls_back_to_local_mode_and_says_what_it_costs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As on a platform with no qdrant-edge-py wheel: the import fails.
    monkeypatch.setitem(sys.modules, "ingest.backends.edge", None)
    with caplog.at_level(logging.WARNING, logger="ingest.store"):
        store = open_store(Settings(data_dir=tmp_path))
    try:
        assert isinstance(store, ClientStore)
        assert store.kind == "local"
    finally:
        store.close()
    [warning] = [r.getMessage() for r in caplog.records if r.name == "ingest.store"]
    assert "Qdrant Edge is not installed" in warning
    assert "brute force" in warning
    assert "qdrant-edge-py" in warning
    assert "RAGTUNE_QDRANT__URL" in warning
