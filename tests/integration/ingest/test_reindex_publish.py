"""`--reindex` builds the new collection beside the old and publishes it at once: a reader sees
the old collection, whole, until the new one is complete, and never a half-built one; a
rebuild that fails or is killed leaves the old one serving and nothing behind.

On Qdrant Edge a collection file flips to the new shard; on qdrant-client (server, or its
local mode, tested here) a collection alias moves to the new build.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ingest.backends.base import NewPoint, VectorStore
from ingest.backends.client import ClientStore
from ingest.backends.edge import EdgeStore
from ingest.embedder import Embedder
from ingest.pipeline import Ingester, IngestOptions
from ingest.search import Retriever
from ingest.sparse import SparseEncoder
from ragtune.errors import UpstreamUnavailable
from tests.conftest import make_chunker
from tests.fixtures.collections import Snapshot, differences, snapshot
from tests.fixtures.corpus import synthetic_records, write_jsonl

C = "docs"
QUERY = "kabar lodun mifel"


class Watched(Embedder):
    """The real embedder, calling `hook` with the call's number before each batch (to look
    at the store mid-build, or fail there). Batches are embedded once for the module."""

    def __init__(
        self,
        real: Embedder,
        cache: dict[tuple[str, ...], npt.NDArray[np.float32]],
        hook: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(real._model, real.name, real.batch_size, real.dtype, real.threads)
        self._cache = cache
        self.hook = hook
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        if self.hook is not None:
            self.hook(self.calls)
        key = tuple(texts)
        if key not in self._cache:
            self._cache[key] = super().encode(texts)
        return self._cache[key]


@pytest.fixture(scope="module")
def cache() -> dict[tuple[str, ...], npt.NDArray[np.float32]]:
    return {}


@dataclass
class Rig:
    """A store with one collection ingested, and what a reader of it sees."""

    store: VectorStore
    embedder: Embedder
    sparse: SparseEncoder
    cache: dict[tuple[str, ...], npt.NDArray[np.float32]]
    corpus: Path
    # The Ingester writes from a thread; qdrant-client's local mode is not thread-safe, so
    # writes and the reader's looks take turns.
    lock: threading.Lock = field(default_factory=threading.Lock)
    staging: list[str] = field(default_factory=list)

    def ingest(
        self, size: int | None = None, hook: Callable[[int], None] | None = None, **opts: Any
    ) -> Watched:
        watched = Watched(self.embedder, self.cache, hook)
        chunker = make_chunker(self.embedder, size=size)
        Ingester(self.store, watched, self.sparse, chunker, write_batch=4).run(
            [self.corpus], IngestOptions(collection=C, **opts)
        )
        return watched

    def view(self) -> tuple[list[str], Snapshot, dict[str, Any] | None, set[str]]:
        """What a reader sees: the collections, `docs`'s points and manifest, a search's ids."""
        with self.lock:
            retriever = Retriever(self.store, self.embedder, self.sparse, C)
            hits = retriever.search(QUERY, mode="hybrid", top_k=5)
            return (
                self.store.names(),
                snapshot(self.store, C),
                self.store.manifest(C),
                {h.id for h in hits},
            )


def _same(seen: tuple[list[str], Snapshot, dict[str, Any] | None, set[str]], old: Any) -> bool:
    names, points, manifest, hits = seen
    return (
        (names, manifest) == (old[0], old[2])
        and not differences(points, old[1])
        and (hits <= set(old[1]))
    )


def _make(kind: str, folder: Path) -> VectorStore:
    return EdgeStore(str(folder)) if kind == "edge" else ClientStore.local(str(folder))


@pytest.fixture(params=["edge", "local"])
def rig(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    embedder: Embedder,
    sparse: SparseEncoder,
    cache: dict[tuple[str, ...], npt.NDArray[np.float32]],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Rig]:
    store = _make(request.param, tmp_path / "qdrant")
    corpus = write_jsonl(tmp_path / "c.jsonl", synthetic_records(6, words=40))
    made = Rig(store, embedder, sparse, cache, corpus)
    for method in ("upsert", "delete"):
        real = getattr(store, method)

        def locked(name: str, items: Any, _real: Any = real) -> None:
            with made.lock:
                _real(name, items)

        monkeypatch.setattr(store, method, locked)
    real_staging = store.staging_name

    def staging_name(name: str) -> str:
        made.staging.append(real_staging(name))
        return made.staging[-1]

    monkeypatch.setattr(store, "staging_name", staging_name)
    made.ingest()
    yield made
    made.store.close()  # the store the test left open (it may have reopened it)


def _leftovers(store: VectorStore) -> list[str]:
    """Staging collections a store holds under any name (not just those it lists)."""
    if isinstance(store, ClientStore):
        return [c.name for c in store.client.get_collections().collections if ".build-" in c.name]
    folder = Path(store.where) / "edge"
    return [p.name for p in folder.iterdir() if ".build-" in p.name]


def test_a_failed_reindex_leaves_the_old_collection_serving(rig: Rig) -> None:
    old = rig.view()
    seen = []

    def look_then_fail(call: int) -> None:
        seen.append(rig.view())
        if call == 3:
            with rig.lock:
                assert rig.store.count(rig.staging[0]) > 0  # the rebuild is under way
            raise UpstreamUnavailable("the embedder went away (a test)")

    with pytest.raises(UpstreamUnavailable, match="went away"):
        rig.ingest(size=64, hook=look_then_fail, reindex=True)
    assert len(seen) == 3
    assert all(_same(v, old) for v in seen)
    assert _same(rig.view(), old)
    assert rig.store.names() == [C]
    assert not rig.store.exists(rig.staging[0])
    assert _leftovers(rig.store) == []
    manifest = rig.store.manifest(C) or {}
    assert manifest["chunker"]["size"] != 64
    assert "in_progress" not in manifest


def test_a_reindex_replaces_the_collection_at_once(rig: Rig) -> None:
    old = rig.view()
    seen = []
    watched = rig.ingest(size=64, hook=lambda _: seen.append(rig.view()), reindex=True)
    assert watched.calls >= 3
    assert len(seen) == watched.calls
    assert all(_same(v, old) for v in seen)  # the old one, whole, until the new is complete
    names, points, manifest, _ = rig.view()
    assert names == [C]
    assert len(points) > len(old[1])
    assert {p[0]["chunker"]["size"] for p in points.values()} == {64}
    assert manifest is not None
    assert manifest["chunker"]["size"] == 64
    assert "in_progress" not in manifest
    if isinstance(rig.store, ClientStore):
        # The build is the collection now, behind the alias `docs`, and not listed itself.
        assert _leftovers(rig.store) == [rig.staging[0]]
    else:
        assert _leftovers(rig.store) == []
        assert not rig.store.exists(rig.staging[0])


def _aliases(store: ClientStore) -> dict[str, str]:
    return {a.alias_name: a.collection_name for a in store.client.get_aliases().aliases}


def _collections(store: ClientStore) -> list[str]:
    return sorted(c.name for c in store.client.get_collections().collections)


@pytest.mark.parametrize("rig", ["local"], indirect=True)
def test_qdrant_client_publishes_by_moving_an_alias(rig: Rig, tmp_path: Path) -> None:
    store = rig.store
    assert isinstance(store, ClientStore)
    assert (_collections(store), _aliases(store)) == ([C], {})
    rig.ingest(size=64, reindex=True)
    first = rig.staging[0]
    assert (_collections(store), _aliases(store)) == ([first], {C: first})
    assert store.names() == [C]
    rig.ingest(size=128, reindex=True)
    second = rig.staging[1]
    assert second != first
    # The alias moved; the build it named before is deleted.
    assert (_collections(store), _aliases(store)) == ([second], {C: second})
    assert store.names() == [C]
    built = rig.view()
    assert {p[0]["chunker"]["size"] for p in built[1].values()} == {128}

    def fail(call: int) -> None:
        if call == 2:
            raise UpstreamUnavailable("the embedder went away (a test)")

    with pytest.raises(UpstreamUnavailable):
        rig.ingest(size=64, hook=fail, reindex=True)
    assert (_collections(store), _aliases(store)) == ([second], {C: second})
    assert _same(rig.view(), built)
    # The local mode keeps its aliases on disk: a reopened store serves the same build.
    store.close()
    reopened = rig.store = ClientStore.local(str(tmp_path / "qdrant"))
    assert reopened.names() == [C]
    assert _aliases(reopened) == {C: second}
    assert _collections(reopened) == [second]
    assert _same(rig.view(), built)


@pytest.mark.parametrize("rig", ["edge"], indirect=True)
def test_edge_removes_what_a_killed_rebuild_left_when_it_opens(rig: Rig, tmp_path: Path) -> None:
    store = rig.store
    assert isinstance(store, EdgeStore)
    before = rig.view()
    manifest = store.manifest(C)
    assert manifest is not None
    # A rebuild killed midway: a staging collection with some points, never published.
    staging = store.staging_name(C)
    store.create(staging, int(manifest["embedder"]["dim"]), {**manifest, "in_progress": {}})
    points, _ = store.scroll(C, limit=3, vectors=True)
    copies = []
    for p in points:
        assert p.dense is not None
        assert p.sparse is not None
        copies.append(NewPoint(p.id, p.dense, p.sparse, p.payload))
    store.upsert(staging, copies)
    assert store.count(staging) == 3
    # A kill between moving a published shard in and flipping the collection file to it.
    edge = tmp_path / "qdrant" / "edge"
    (edge / C / "shard-0badc0de").mkdir()
    (edge / C / "shard-0badc0de" / "segment").write_text("half")
    # A drop killed after the collection file went.
    (edge / "dropped" / "shard-0000").mkdir(parents=True)
    assert store.names() == [C]  # the staging collection is not listed, even now
    store.close()
    assert (edge / staging).is_dir()

    reopened = rig.store = EdgeStore(str(tmp_path / "qdrant"))
    assert sorted(p.name for p in edge.iterdir() if p.is_dir()) == [C]
    shards = [p.name for p in (edge / C).iterdir() if p.is_dir()]
    assert len(shards) == 1
    assert shards != ["shard-0badc0de"]
    assert reopened.names() == [C]
    assert not reopened.exists(staging)
    assert _same(rig.view(), before)
