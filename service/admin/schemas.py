"""Admin API bodies: strict (unknown fields refused)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapters.records import NAME_PATTERN, VERSION_PATTERN
from adapters.registry import AdapterRecord, AliasRecord

# The registry's rules for names and refs (adapters/records.py), as the schema documents
# them: only documented, since the registry's own check says what is wrong in words.
_NAME = NAME_PATTERN.pattern.strip("^$")
NAME = f"^{_NAME}$"
REF = f"^{_NAME}@{VERSION_PATTERN.pattern.strip('^$')}$"
REF_OR_ALIAS = f"^{_NAME}(@{VERSION_PATTERN.pattern.strip('^$')})?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(_Strict):
    # A folder under the adapter root (settings.adapters.root), relative to it.
    path: str = Field(min_length=1)
    name: str = Field(json_schema_extra={"pattern": NAME})
    description: str = ""
    # Point this alias at the new version once it is loaded.
    alias: str | None = Field(default=None, json_schema_extra={"pattern": NAME})


class AliasRequest(_Strict):
    target: str = Field(
        description="a version ref (name@version), or another alias (its current target)",
        json_schema_extra={"pattern": REF_OR_ALIAS},
    )
    require_suite: str | None = Field(
        default=None,
        min_length=1,
        description="an eval suite (SUITE.yaml, a path on the server: absolute, or relative to "
        "its working directory) run first with the target served in the alias's place; the "
        "flip is refused (409), naming the failing gates, unless every gate holds",
    )


class RegistryListing(BaseModel):
    revision: int
    adapters: list[AdapterRecord]
    aliases: dict[str, AliasRecord]


class RegisterResponse(BaseModel):
    adapter: AdapterRecord
    alias: AliasRecord | None = None


class BackendStatus(BaseModel):
    index: int
    name: str
    up: bool
    loaded: list[str]
    missing: list[str]
    extra: list[str]
    error: str | None


class CollectionStatus(BaseModel):
    name: str
    points: int
    # Vectors the HNSW index covers (the rest is searched exactly); None where the store
    # does not say (a Qdrant server, qdrant-client's local mode).
    dense_indexed: int | None
    segments: int | None


class StoreStatus(BaseModel):
    """The vector store this process reads: `edge` (embedded Qdrant Edge), `local`
    (qdrant-client's local mode) or `server`."""

    kind: str
    where: str
    collections: list[CollectionStatus]
    # Collections an older embedded store holds that `ragtune store migrate` has not copied.
    not_migrated: list[str]


class Status(BaseModel):
    """What this process serves, against the registry."""

    revision: int
    # alias -> version requests are sent to now (in this process)
    active: dict[str, str]
    # alias -> target in the registry (differs from `active` only during a swap)
    registry: dict[str, str]
    inflight: dict[str, int]
    backends: list[BackendStatus]
    drift: bool
    store: StoreStatus | None = None


class AuditEntries(BaseModel):
    entries: list[dict[str, Any]]
