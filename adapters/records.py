"""What the adapter registry records: versions, aliases, the whole state; name rules."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ragtune.errors import InvalidInput

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VERSION_PATTERN = re.compile(r"^[0-9a-f]{16}$")


class AdapterRecord(BaseModel):
    """One registered adapter version; its files live at `store/<name>/<version>/`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    base_model: str | None
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    description: str = ""
    created_at: datetime
    evals: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class AliasRecord(BaseModel):
    """A movable name for a version; `previous` is what `rollback` goes back to."""

    model_config = ConfigDict(extra="forbid")

    alias: str
    target: str
    previous: str | None = None
    updated_at: datetime


class RegistryState(BaseModel):
    """Everything in `registry.json` at one revision."""

    model_config = ConfigDict(extra="forbid")

    revision: int = 0
    records: list[AdapterRecord] = Field(default_factory=list)
    aliases: dict[str, AliasRecord] = Field(default_factory=dict)

    def find(self, ref: str) -> AdapterRecord | None:
        return next((r for r in self.records if r.ref == ref), None)


def check_name(value: str, what: str = "adapter name") -> str:
    """Refuse names that could not be a folder name, a URL segment or part of a ref."""
    if not NAME_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"{what} {value!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
    return value


def parse_ref(ref: str) -> tuple[str, str]:
    """Split `name@version`, refusing anything else."""
    name, sep, version = ref.partition("@")
    if not sep or not NAME_PATTERN.fullmatch(name) or not VERSION_PATTERN.fullmatch(version):
        raise InvalidInput(
            f"{ref!r} is not an adapter ref; write name@version (16 hex digits), as "
            f"`ragtune adapters list` shows"
        )
    return name, version
