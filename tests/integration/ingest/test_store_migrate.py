"""`ragtune store migrate`: collections that qdrant-client's local mode wrote (the embedded store
before Qdrant Edge) copied into Qdrant Edge whole, or not at all, without embedding again.

The local-mode store is written once for the module by the real Ingester into a real folder;
each test works on its own copy of that folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from ingest.backends.base import NewPoint
from ingest.backends.client import ClientStore
from ingest.backends.edge import EdgeStore
from ingest.embedder import Embedder
from ingest.pipeline import Ingester, IngestOptions
from ingest.search import Retriever
from ingest.sparse import SparseEncoder
from ingest.store import Collection, open_store
from ingest.store_migration import BACKUP_DIR, migrate_local_store
from ragtune.errors import NotFound, UpstreamUnavailable
from ragtune.settings import Settings
from tests.conftest import make_chunker
from tests.fixtures.collections import Snapshot, differences, snapshot
from tests.fixtures.corpus import synthetic_records, write_jsonl, write_tree

NAMES = ["kb", "notes"]


@dataclass(frozen=True)
class Legacy:
    """A data folder whose `qdrant/` qdrant-client's local mode wrote, and what it held."""

    data_dir: Path
    snapshots: dict[str, Snapshot]
    manifests: dict[str, dict[str, Any]]

    @property
    def location(self) -> str:
        return str(self.data_dir / "qdrant")

    def copy(self, to: Path) -> Legacy:
        shutil.copytree(self.data_dir, to)
        return Legacy(to, self.snapshots, self.manifests)


@pytest.fixture(scope="module")
def written(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder, sparse: SparseEncoder
) -> Legacy:
    root = tmp_path_factory.mktemp("legacy")
    data_dir = root / "data"
    store = ClientStore.local(str(data_dir / "qdrant"))
    try:
        ingester = Ingester(store, embedder, sparse, make_chunker(embedder), write_batch=8)
        docs = write_tree(root / "docs")
        write_jsonl(docs / "records.jsonl", synthetic_records(12, words=40))
        ingester.run([docs], IngestOptions(collection="kb"))
        notes = write_jsonl(root / "notes.jsonl", synthetic_records(4, seed=1, words=20))
        ingester.run([notes], IngestOptions(collection="notes"))
        snapshots = {name: snapshot(store, name) for name in NAMES}
        manifests = {name: store.manifest(name) or {} for name in NAMES}
    finally:
        store.close()
    assert len(snapshots["kb"]) > 16  # more than two copy batches of 8 (see the failure tests)
    assert all(manifests.values())
    return Legacy(data_dir, snapshots, manifests)


@pytest.fixture
def legacy(written: Legacy, tmp_path: Path) -> Legacy:
    return written.copy(tmp_path / "data")


def _assert_copied(edge: EdgeStore, legacy: Legacy, names: Sequence[str] = NAMES) -> None:
    for name in names:
        assert differences(legacy.snapshots[name], snapshot(edge, name)) == [], name
        assert edge.manifest(name) == legacy.manifests[name]


def _assert_local_untouched(legacy: Legacy) -> None:
    assert not (legacy.data_dir / "qdrant" / BACKUP_DIR).exists()
    local = ClientStore.local(legacy.location)
    try:
        for name in NAMES:
            assert differences(legacy.snapshots[name], snapshot(local, name)) == [], name
            assert local.manifest(name) == legacy.manifests[name]
    finally:
        local.close()


def _edge_folders(legacy: Legacy) -> list[str]:
    return sorted(p.name for p in (legacy.data_dir / "qdrant" / "edge").iterdir() if p.is_dir())


def test_the_edge_store_points_at_migrate_for_local_mode_collections(
    legacy: Legacy, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ingest.store"):
        store = open_store(Settings(data_dir=legacy.data_dir))
    try:
        assert isinstance(store, EdgeStore)
        assert list(store.legacy) == NAMES
        assert store.names() == []
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "local mode (kb, notes)" in warning
        assert "run `ragtune store migrate`" in warning
        with pytest.raises(
            NotFound, match=r"'kb' is in the embedded store .*`ragtune store migrate`"
        ):
            Collection(store, "kb").require()
        # A name the local mode never had gets the ordinary message.
        with pytest.raises(NotFound, match="create it with `ragtune ingest PATH --collection x`"):
            Collection(store, "x").require()
    finally:
        store.close()


def test_migration_copies_every_point_vector_payload_and_manifest(
    legacy: Legacy, embedder: Embedder, sparse: SparseEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    said: list[str] = []
    edge = EdgeStore(legacy.location)
    try:
        results = migrate_local_store(legacy.location, edge, progress=said.append)
        assert [(r.name, r.points, r.outcome) for r in results] == [
            (name, len(legacy.snapshots[name]), "copied") for name in NAMES
        ]
        assert edge.names() == NAMES
        assert list(edge.legacy) == []
        _assert_copied(edge, legacy)
        assert any(BACKUP_DIR in line for line in said)
    finally:
        edge.close()
    # The local mode's files are kept aside, out of the store's way.
    folder = legacy.data_dir / "qdrant"
    assert not (folder / "meta.json").exists()
    assert not (folder / "collection").exists()
    assert (folder / BACKUP_DIR / "meta.json").is_file()
    assert sorted(p.name for p in (folder / BACKUP_DIR / "collection").iterdir()) == NAMES
    # The default store opens the copies, with nothing left to migrate, and they answer.
    with caplog.at_level(logging.WARNING, logger="ingest.store"):
        store = open_store(Settings(data_dir=legacy.data_dir))
    try:
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        assert list(store.legacy) == []
        hits = Retriever(store, embedder, sparse, "kb").search("high tide harbour", top_k=1)
        assert hits[0].payload["file_name"] == "tides.html"
    finally:
        store.close()
    edge = EdgeStore(legacy.location)
    try:
        with pytest.raises(NotFound, match="nothing to migrate"):
            migrate_local_store(legacy.location, edge)
        _assert_copied(edge, legacy)
    finally:
        edge.close()


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """EdgeStore.upsert raises on its n-th call; returns the collections it wrote to."""
    real = EdgeStore.upsert
    calls: list[str] = []

    def upsert(self: EdgeStore, name: str, points: Sequence[NewPoint]) -> None:
        calls.append(name)
        if len(calls) == n:
            raise UpstreamUnavailable("the disk is full (a test)")
        real(self, name, points)

    monkeypatch.setattr(EdgeStore, "upsert", upsert)
    return calls


def test_a_failure_midway_through_a_copy_changes_nothing_and_a_rerun_completes(
    legacy: Legacy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 8 points instead of 1024, so a small collection is copied in several.
    monkeypatch.setattr("ingest.store_migration._BATCH", 8)
    calls = _fail_on_call(monkeypatch, 2)
    edge = EdgeStore(legacy.location)
    try:
        with pytest.raises(UpstreamUnavailable, match="disk is full"):
            migrate_local_store(legacy.location, edge)
        assert len(calls) == 2
        assert all(".build-" in name for name in calls)  # copies go to a staging collection
        assert edge.names() == []
        assert not edge.exists("kb")
        assert _edge_folders(legacy) == []  # no staging folder left either
    finally:
        edge.close()
    _assert_local_untouched(legacy)
    monkeypatch.undo()
    edge = EdgeStore(legacy.location)
    try:
        results = migrate_local_store(legacy.location, edge)
        assert [r.outcome for r in results] == ["copied", "copied"]
        _assert_copied(edge, legacy)
    finally:
        edge.close()


def test_a_failure_in_the_second_collection_keeps_the_first_and_a_rerun_finishes(
    legacy: Legacy, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fail_on_call(monkeypatch, 2)  # kb fits one batch; notes's first batch fails
    edge = EdgeStore(legacy.location)
    try:
        with pytest.raises(UpstreamUnavailable):
            migrate_local_store(legacy.location, edge)
        assert calls[1].startswith("notes.build-")
        assert edge.names() == ["kb"]
        _assert_copied(edge, legacy, ["kb"])
        assert _edge_folders(legacy) == ["kb"]
    finally:
        edge.close()
    _assert_local_untouched(legacy)
    store = open_store(Settings(data_dir=legacy.data_dir))
    try:
        assert list(store.legacy) == ["notes"]
    finally:
        store.close()
    monkeypatch.undo()
    edge = EdgeStore(legacy.location)
    try:
        results = migrate_local_store(legacy.location, edge)
        assert [(r.name, r.outcome) for r in results] == [
            ("kb", "already copied"),
            ("notes", "copied"),
        ]
        _assert_copied(edge, legacy)
    finally:
        edge.close()


def test_an_edge_collection_of_the_same_name_is_not_overwritten(
    legacy: Legacy, embedder: Embedder, sparse: SparseEncoder, tmp_path: Path
) -> None:
    """After the switch to Edge, `kb` was ingested again into Edge: that newer collection is
    what `ragtune status` shows and serves, and migrating must not replace it with the old."""
    edge = EdgeStore(legacy.location)
    try:
        newer = write_jsonl(tmp_path / "newer.jsonl", [{"_id": "n1", "text": "newer text"}])
        Ingester(edge, embedder, sparse, make_chunker(embedder)).run(
            [newer], IngestOptions(collection="kb")
        )
        before = snapshot(edge, "kb")
        results = migrate_local_store(legacy.location, edge)
        outcomes = {r.name: r.outcome for r in results}
        assert outcomes["notes"] == "copied"
        assert outcomes["kb"].startswith("skipped"), outcomes
        assert differences(before, snapshot(edge, "kb")) == []
    finally:
        edge.close()


def test_a_collection_rebuilt_under_an_alias_is_migrated_under_its_name(
    tmp_path: Path, embedder: Embedder, sparse: SparseEncoder
) -> None:
    """`--reindex` in the local mode publishes the rebuild by a collection alias (`kb` ->
    `kb.build-<hex>`): the collection is `kb`, and it must arrive in Edge as `kb`."""
    data_dir = tmp_path / "data"
    location = str(data_dir / "qdrant")
    path = write_jsonl(tmp_path / "c.jsonl", synthetic_records(3, words=20))
    local = ClientStore.local(location)
    try:
        ingester = Ingester(local, embedder, sparse, make_chunker(embedder))
        ingester.run([path], IngestOptions(collection="kb"))
        ingester.run([path], IngestOptions(collection="kb", reindex=True))
        assert local.names() == ["kb"]
        source = snapshot(local, "kb")
    finally:
        local.close()
    store = open_store(Settings(data_dir=data_dir))
    try:
        assert list(store.legacy) == ["kb"]
    finally:
        store.close()
    edge = EdgeStore(location)
    try:
        migrate_local_store(location, edge)
    finally:
        edge.close()
    edge = EdgeStore(location)  # reopened: a name that looks like a staging one would go now
    try:
        assert edge.names() == ["kb"]
        assert differences(source, snapshot(edge, "kb")) == []
    finally:
        edge.close()


# -- the command -----------------------------------------------------------------------------


def _status(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["store", "status", "--json"]) == 0
    value: dict[str, Any] = json.loads(capsys.readouterr().out)
    return value


def test_the_store_commands_migrate_and_report(
    legacy: Legacy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(legacy.data_dir))
    status = _status(capsys)
    assert (status["store"], status["where"]) == ("edge", legacy.location)
    assert status["collections"] == []
    assert status["not_migrated"] == NAMES

    assert main(["store", "migrate", "--collection", "nope"]) == 2
    assert "nope: not in the local-mode store" in capsys.readouterr().err

    assert main(["store", "migrate", "--collection", "notes"]) == 0
    assert capsys.readouterr().out == f"notes: {len(legacy.snapshots['notes'])} points, copied\n"
    status = _status(capsys)
    assert [c["collection"] for c in status["collections"]] == ["notes"]
    assert status["not_migrated"] == ["kb"]
    assert (legacy.data_dir / "qdrant" / "meta.json").is_file()  # kb still lives there

    assert main(["store", "migrate"]) == 0
    out = capsys.readouterr().out
    assert f"kb: {len(legacy.snapshots['kb'])} points, copied" in out
    assert "notes: " in out
    assert "already copied" in out
    status = _status(capsys)
    assert "not_migrated" not in status
    assert {c["collection"]: c["points"] for c in status["collections"]} == {
        name: len(legacy.snapshots[name]) for name in NAMES
    }
    assert all(c["segments"] >= 1 for c in status["collections"])

    assert main(["store", "migrate"]) == 2
    assert "nothing to migrate" in capsys.readouterr().err


def test_migrate_refuses_a_store_that_is_not_edge(
    legacy: Legacy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(legacy.data_dir))
    monkeypatch.setenv("RAGTUNE_QDRANT__EMBEDDED", "local")
    assert main(["store", "migrate"]) == 2
    assert "unset RAGTUNE_QDRANT__URL and RAGTUNE_QDRANT__EMBEDDED" in capsys.readouterr().err
    _assert_local_untouched(legacy)
