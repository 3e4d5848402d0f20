"""What ingestion, retrieval, evaluation and the admin API ask of a vector store.

Two implementations: `edge.EdgeStore` (Qdrant Edge in the process, the embedded default) and
`client.ClientStore` (qdrant-client: a Qdrant server, or its local mode where no Edge wheel
exists). Both keep ragtune's schema (ingest/schema.py) and give the same ids, payloads and
rankings for the same points; tests/integration/ingest/test_congruence.py checks it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from qdrant_client.models import SparseVector

Mode = Literal["dense", "sparse", "hybrid"]
FilterValue = str | int | bool
# AND of exact matches; a list of values matches any of them.
Filters = Mapping[str, FilterValue | Sequence[FilterValue]]
# Fields of the payload to return, or all of it (True) or none (False).
Fields = Sequence[str] | bool


@dataclass(frozen=True)
class NewPoint:
    """A chunk to store: its id, both vectors and its payload."""

    id: str
    dense: Sequence[float]
    sparse: SparseVector
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    """A point read back; vectors only when asked for."""

    id: str
    payload: dict[str, Any]
    dense: list[float] | None = None
    sparse: SparseVector | None = None


@dataclass(frozen=True)
class ScoredPoint:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Search:
    """One retrieval: dense, sparse, or both fused by reciprocal rank (`depth` candidates a
    side), over the points matching `filters`."""

    mode: Mode
    limit: int
    dense: Sequence[float] | None = None
    sparse: SparseVector | None = None
    filters: Filters = field(default_factory=dict)
    depth: int = 0
    score_threshold: float | None = None


@dataclass(frozen=True)
class IndexStatus:
    """How much of a collection the vector index covers (the rest is searched exactly)."""

    points: int
    # Dense vectors in an HNSW index (the rest are searched exactly).
    dense_indexed: int
    segments: int


class VectorStore(ABC):
    """Named collections in ragtune's schema. Calls block; callers keep them off the event
    loop. Failures are ragtune's domain errors (NotFound, ConfigMismatch, InvalidInput,
    UpstreamUnavailable, UpstreamRejected), never the backend's own exceptions."""

    # "edge", "local" (qdrant-client's local mode) or "server".
    kind: str
    # Where it is, for messages: a folder or a URL.
    where: str
    # Collections that an older embedded store (qdrant-client's local mode) holds in the same
    # folder and `ragtune store migrate` has not copied yet.
    legacy: Sequence[str] = ()

    @property
    def in_process(self) -> bool:
        """True when the store runs in this process (one process may open it at a time)."""
        return self.kind != "server"

    @abstractmethod
    def names(self) -> list[str]:
        """The collections there are."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def create(self, name: str, dim: int, manifest: dict[str, Any]) -> None:
        """A new, empty collection in ragtune's schema that records `manifest`."""

    @abstractmethod
    def manifest(self, name: str) -> dict[str, Any] | None:
        """The manifest recorded when the collection was made, or None if ragtune did not
        make it."""

    @abstractmethod
    def set_manifest(self, name: str, manifest: dict[str, Any]) -> None: ...

    @abstractmethod
    def drop(self, name: str) -> None: ...

    @abstractmethod
    def count(self, name: str) -> int: ...

    @abstractmethod
    def scroll(
        self,
        name: str,
        *,
        limit: int,
        offset: str | None = None,
        fields: Fields = True,
        vectors: bool = False,
        filters: Filters | None = None,
    ) -> tuple[list[StoredPoint], str | None]:
        """A page of points in id order and the offset of the next page (None at the end)."""

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], vectors: bool = False) -> list[StoredPoint]:
        """The points with these ids that exist, payloads included."""

    @abstractmethod
    def upsert(self, name: str, points: Sequence[NewPoint]) -> None:
        """Store the points, durably, before returning."""

    @abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def search(self, name: str, search: Search) -> list[ScoredPoint]: ...

    @abstractmethod
    def staging_name(self, name: str) -> str:
        """A fresh collection name to build a replacement for `name` in (`--reindex`)."""

    @abstractmethod
    def publish(self, staging: str, name: str) -> None:
        """Make the collection built as `staging` the one called `name`, at once: a reader
        sees the old collection or the new one, never a half-built one. The old is dropped."""

    def index_status(self, name: str) -> IndexStatus | None:
        """How much of the collection the vector index covers, where the store says."""
        return None

    def optimize(self, name: str, progress: Callable[[str], None] | None = None) -> bool:
        """Build the vector index where the store builds it on request (never while serving:
        it holds the interpreter for minutes at 100k points); True if it did anything."""
        return False

    @abstractmethod
    def ping(self) -> None:
        """Return if the store answers; raise UpstreamUnavailable if not."""

    @abstractmethod
    def close(self) -> None: ...
