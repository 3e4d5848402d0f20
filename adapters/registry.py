"""The adapter registry on disk: content-addressed versions, aliases, shared by processes.

Layout under `root`: `registry.json` (records and aliases, replaced atomically), `.lock`
(flock for every read-modify-write), `store/<name>/<version>/` (immutable adapter files) and
`tmp/` (staging on the same filesystem, so a finished copy is renamed into place).
Readers never lock: they re-read `registry.json`, which is only ever replaced whole.

Each stored version also holds `.ragtune-sha256` (`sha256sum` format, so `sha256sum -c` checks
it by hand) with its files' digests; the version itself is a digest of them. Loading a version
(`path`) checks its files against both, so a file damaged on disk (truncated, flipped bytes) is
refused by name instead of reaching an engine, which would load damaged weights silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adapters.policy import check_delete
from adapters.records import AdapterRecord, AliasRecord, RegistryState, check_name, parse_ref
from adapters.validate import ModelSpec, validate_adapter
from ragtune.errors import AdapterError, InvalidInput, NotFound, RagtuneError

__all__ = [
    "AdapterRecord",
    "AliasRecord",
    "Registry",
    "RegistryState",
    "check_name",
    "content_version",
    "parse_ref",
]

REGISTRY_FILE = "registry.json"
# The digests of a stored version's files, written at registration (not part of the version).
SUMS_FILE = ".ragtune-sha256"
LOCK_FILE = ".lock"
FORMAT = 1
# Staging folders older than this were left by a process that died mid-copy.
STALE_STAGING_S = 24 * 3600


class Registry:
    """Register, alias, roll back and delete adapter versions under `root`.

    `model` None skips the checks that need the base model (enough for listing and aliases).
    Several processes may share `root` (flock; on NFS it needs working POSIX locks).
    """

    def __init__(
        self, root: Path, model: ModelSpec | None, *, max_rank: int, max_bytes: int
    ) -> None:
        self.root = root
        self.model = model
        self.max_rank = max_rank
        self.max_bytes = max_bytes

    # Reads: lock-free, always from disk, so other processes' writes are seen.

    def snapshot(self) -> RegistryState:
        """Revision, records and aliases from one read of `registry.json`."""
        path = self.root / REGISTRY_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return RegistryState()
        except (OSError, UnicodeDecodeError) as exc:
            raise self._corrupt(exc) from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
                raise ValueError(f"expected a JSON object with format {FORMAT}")
            return RegistryState.model_validate(data)
        except (ValueError, ValidationError) as exc:
            raise self._corrupt(exc) from exc

    def revision(self) -> int:
        """A number that grows with every write; cheap enough to poll."""
        path = self.root / REGISTRY_FILE
        try:
            revision = json.loads(path.read_bytes()).get("revision")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, AttributeError) as exc:
            raise self._corrupt(exc) from exc
        if not isinstance(revision, int):
            raise self._corrupt(ValueError("no integer revision"))
        return revision

    def get(self, ref: str) -> AdapterRecord:
        """The record of `name@version`."""
        parse_ref(ref)
        return _record(self.snapshot(), ref)

    def path(self, ref: str) -> Path:
        """The folder holding the files of `name@version`, checked against their digests
        (AdapterError naming the damaged file): what engines load is what was registered."""
        record = self.get(ref)
        folder = self._store_dir(record.name, record.version)
        if not folder.is_dir():
            raise NotFound(
                f"the files of {ref} are missing from {folder}; register the adapter again"
            )
        damage = damaged(folder, record.version)
        if damage is not None:
            raise AdapterError(
                f"adapter {ref} is damaged on disk: {damage}. It is not loaded; other "
                f"versions and routes are not affected. Register the adapter's original "
                f"folder again to restore the files (`ragtune adapters register PATH --name "
                f"{record.name}`: the same files are the same version), or point its aliases "
                f"at another version (`ragtune adapters alias ALIAS REF`)"
            )
        return folder

    def versions(self, name: str | None = None) -> list[AdapterRecord]:
        """Every record, or those of one adapter name, oldest first."""
        records = self.snapshot().records
        if name is not None:
            records = [r for r in records if r.name == name]
        return sorted(records, key=lambda r: (r.name, r.created_at))

    def aliases(self) -> dict[str, AliasRecord]:
        return self.snapshot().aliases

    def resolve(self, alias_or_ref: str) -> AdapterRecord:
        """The record an alias points at, or the record of a literal `name@version`."""
        return _resolve(self.snapshot(), alias_or_ref)

    # Writes: each one under the exclusive lock, re-reading first.

    def register(self, source: Path, name: str, description: str = "") -> AdapterRecord:
        """Validate and store an adapter folder; the same content again returns its record."""
        check_name(name)
        validate_adapter(
            source, self.model, max_rank=self.max_rank, max_bytes=self.max_bytes, name=name
        )
        staging = self._staging()
        try:
            # Named after the adapter, so validation messages use its name.
            folder = staging / name
            shutil.copytree(source, folder, symlinks=True)
            # Checked again on the copy: the source could have changed since.
            info = validate_adapter(
                folder, self.model, max_rank=self.max_rank, max_bytes=self.max_bytes
            )
            digests = _digests(folder)
            version, size = _version(digests), _size(folder, digests)
            _write_sums(folder, digests)
            _make_read_only(folder)
            with self._lock():
                state = self.snapshot()
                existing = state.find(f"{name}@{version}")
                final = self._store_dir(name, version)
                if existing is not None and final.is_dir() and not damaged(final, version):
                    return existing
                orphan = self._discard(final)
                if orphan is not None:
                    # Left by a write that died before registry.json was replaced.
                    shutil.rmtree(orphan, ignore_errors=True)
                final.parent.mkdir(parents=True, exist_ok=True)
                folder.rename(final)
                if existing is not None:
                    return existing  # its files were missing or damaged: restored from this copy
                record = AdapterRecord(
                    name=name,
                    version=version,
                    base_model=info.base_model,
                    rank=info.rank,
                    alpha=info.alpha,
                    target_modules=sorted(info.target_modules),
                    size_bytes=size,
                    description=description,
                    created_at=datetime.now(UTC),
                )
                state.records.append(record)
                self._save(state)
                return record
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def set_alias(self, alias: str, ref: str) -> AliasRecord:
        """Point `alias` at a version (a ref, or another alias's target); keep the old one."""
        check_name(alias, "alias")
        with self._lock():
            state = self.snapshot()
            record = _resolve(state, ref)
            current = state.aliases.get(alias)
            if current is not None and current.target == record.ref:
                return current
            updated = AliasRecord(
                alias=alias,
                target=record.ref,
                previous=current.target if current is not None else None,
                updated_at=datetime.now(UTC),
            )
            state.aliases[alias] = updated
            self._save(state)
            return updated

    def rollback(self, alias: str) -> AliasRecord:
        """Swap an alias's target and previous target (so a second rollback undoes it)."""
        with self._lock():
            state = self.snapshot()
            current = _alias(state, alias)
            if current.previous is None:
                raise InvalidInput(
                    f"alias {alias!r} has never pointed anywhere else, so there is nothing to "
                    f"roll back to; use `ragtune adapters alias {alias} REF` instead"
                )
            updated = AliasRecord(
                alias=alias,
                target=current.previous,
                previous=current.target,
                updated_at=datetime.now(UTC),
            )
            state.aliases[alias] = updated
            self._save(state)
            return updated

    def remove_alias(self, alias: str) -> None:
        """Forget an alias (the versions it pointed at stay registered)."""
        with self._lock():
            state = self.snapshot()
            _alias(state, alias)
            del state.aliases[alias]
            self._save(state)

    def delete(self, ref: str) -> None:
        """Remove a version and its files; refused while an alias targets it or keeps it as
        the rollback target."""
        parse_ref(ref)
        with self._lock():
            state = self.snapshot()
            record = _record(state, ref)
            check_delete(ref, state.aliases)
            state.records.remove(record)
            self._save(state)
            folder = self._store_dir(record.name, record.version)
            trash = self._discard(folder)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # only succeeds when no version is left
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def attach_eval(self, ref: str, key: str, results: dict[str, Any]) -> AdapterRecord:
        """Store evaluation results on a version under `key` (replacing earlier ones)."""
        parse_ref(ref)
        if not key:
            raise InvalidInput("the evaluation key is empty; name the evaluation")
        try:
            json.dumps(results, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"evaluation results must be plain JSON: {exc}") from exc
        with self._lock():
            state = self.snapshot()
            record = _record(state, ref)
            record.evals[key] = results
            self._save(state)
            return record

    # Internals.

    def _store_dir(self, name: str, version: str) -> Path:
        return self.root / "store" / name / version

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, state: RegistryState) -> None:
        """Write `state` as the next revision: temp file, fsync, rename, fsync the folder."""
        state.revision += 1
        text = json.dumps({"format": FORMAT, **state.model_dump(mode="json")}, indent=2)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".registry-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fchmod(f.fileno(), 0o644)
                os.fsync(f.fileno())
            os.replace(tmp, self.root / REGISTRY_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _staging(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in tmp.iterdir():
            with contextlib.suppress(OSError):
                if now - old.lstat().st_mtime > STALE_STAGING_S:
                    _remove(old)
        staging = tmp / uuid.uuid4().hex
        staging.mkdir()
        return staging

    def _discard(self, folder: Path) -> Path | None:
        """Move `folder` out of the store at once (a rename); the caller deletes it later."""
        if not folder.exists():
            return None
        trash = self._staging()
        folder.rename(trash / "deleted")
        return trash

    def _corrupt(self, exc: Exception) -> RagtuneError:
        return RagtuneError(
            f"{self.root / REGISTRY_FILE} is unreadable or corrupt ({exc}); restore it from a "
            f"backup or repair it by hand. It is never reset automatically, and the adapter "
            f"files under {self.root / 'store'} are untouched"
        )


def _resolve(state: RegistryState, alias_or_ref: str) -> AdapterRecord:
    if "@" in alias_or_ref:
        parse_ref(alias_or_ref)
        ref = alias_or_ref
    else:
        alias = state.aliases.get(alias_or_ref)
        if alias is None:
            raise NotFound(
                f"no alias {alias_or_ref!r}; give an alias (`ragtune adapters aliases`) or a "
                f"name@version ref (`ragtune adapters list`)"
            )
        ref = alias.target
    return _record(state, ref)


def _record(state: RegistryState, ref: str) -> AdapterRecord:
    record = state.find(ref)
    if record is None:
        raise NotFound(f"no adapter {ref}; `ragtune adapters list` shows the registered ones")
    return record


def _alias(state: RegistryState, alias: str) -> AliasRecord:
    record = state.aliases.get(alias)
    if record is None:
        raise NotFound(f"no alias {alias!r}; `ragtune adapters aliases` lists them")
    return record


def content_version(folder: Path) -> tuple[str, int]:
    """The version of an adapter folder (16 hex digits of sha256 over its sorted (relative
    path, file sha256) pairs) and its size in bytes (the registry's digest file aside)."""
    digests = _digests(folder)
    return _version(digests), _size(folder, digests)


def damaged(folder: Path, version: str) -> str | None:
    """What is wrong with a stored version's files (naming the file), or None when they are
    the files it was registered with."""
    try:
        digests = _digests(folder)
    except OSError as exc:
        return f"{exc.filename or folder} cannot be read ({exc.strerror or exc})"
    if _version(digests) == version:
        return None
    recorded = _read_sums(folder)
    # The digest file names the damaged file, if it is itself whole: its digests make the version.
    if recorded is not None and _version(recorded) == version:
        for rel in sorted(recorded.keys() | digests.keys()):
            path = folder / rel
            if rel not in digests:
                return f"{path} is missing"
            if rel not in recorded:
                return f"{path} was added after registration"
            if digests[rel] != recorded[rel]:
                return (
                    f"{path} does not match the sha256 recorded when it was registered "
                    f"({path.stat().st_size} bytes now: truncated or overwritten)"
                )
    # Registered before there was a digest file, or that file is damaged too.
    return f"the files under {folder} do not match the version's sha256 ({version})"


def _digests(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of each file of an adapter folder, the digest file aside."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel == SUMS_FILE:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
        digests[rel] = digest.hexdigest()
    return digests


def _version(digests: dict[str, str]) -> str:
    outer = hashlib.sha256()
    for rel in sorted(digests):
        outer.update(f"{rel}\0{digests[rel]}\n".encode())
    return outer.hexdigest()[:16]


def _size(folder: Path, digests: dict[str, str]) -> int:
    return sum((folder / rel).stat().st_size for rel in digests)


def _write_sums(folder: Path, digests: dict[str, str]) -> None:
    # sha256sum's format: `cd <version folder> && sha256sum -c .ragtune-sha256` checks it.
    lines = "".join(f"{digests[rel]}  {rel}\n" for rel in sorted(digests))
    (folder / SUMS_FILE).write_text(lines, encoding="utf-8")


def _read_sums(folder: Path) -> dict[str, str] | None:
    """The digests recorded at registration; None for a version stored before they were
    (or whose digest file cannot be read: then the version alone is checked)."""
    try:
        text = (folder / SUMS_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    recorded = {}
    for line in text.splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            return None
        recorded[rel] = digest
    return recorded


def _make_read_only(folder: Path) -> None:
    # Stored versions are immutable: the version is a hash of these bytes.
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink()
