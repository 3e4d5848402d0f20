"""Untrusted paths and uploads: resolve a user's path under a root, unpack an adapter archive.

Archives are unpacked member by member by this code, never by `extractall`, so that only
plain files and folders are ever created, inside the destination, up to a byte budget.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from engine.lora import CONFIG_FILE
from ragtune.errors import InvalidInput

CHUNK_BYTES = 1024 * 1024
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Folders some archivers add beside the content (macOS Finder); never part of an adapter.
IGNORED_TOP = frozenset({"__MACOSX"})


def resolve_under(root: Path, user_path: str) -> Path:
    """The real path of `user_path` inside `root`; refuses anything that could leave it."""
    if not user_path or "\x00" in user_path:
        raise InvalidInput("the path is empty or holds a NUL character; give a relative path")
    pure = PurePosixPath(user_path.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", user_path):
        raise InvalidInput(f"{user_path!r} is absolute; give a path relative to {root}")
    if ".." in pure.parts:
        raise InvalidInput(f"{user_path!r} contains '..'; give a path inside {root}")
    real_root = root.resolve()
    resolved = (real_root / pure).resolve()
    if not resolved.is_relative_to(real_root):
        # Only a symbolic link can get here: the path itself was checked above.
        raise InvalidInput(f"{user_path!r} leads outside {root} through a symbolic link")
    return resolved


def extract_archive(data: Path, dest: Path, *, max_bytes: int, max_files: int = 256) -> Path:
    """Unpack a zip or tar(.gz) adapter upload into `dest` (new or empty); return the folder
    holding adapter_config.json. Anything but plain files and folders is refused."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidInput(f"{dest} is not empty; unpack into a new folder")
    try:
        _extract(data, dest.resolve(), max_bytes, max_files)
    except BaseException:
        _empty(dest)
        raise
    return _adapter_folder(dest)


def _extract(data: Path, dest: Path, max_bytes: int, max_files: int) -> None:
    with data.open("rb") as f:
        magic = f.read(4)
    budget = _Budget(max_bytes, max_files)
    try:
        if magic in ZIP_MAGIC:
            with zipfile.ZipFile(data) as zf:
                for info in zf.infolist():
                    _zip_member(zf, info, dest, budget)
            return
        try:
            tar = tarfile.open(data, mode="r:*")  # noqa: SIM115  (closed below)
        except tarfile.ReadError as exc:
            raise InvalidInput(
                "the upload is neither a zip nor a tar(.gz) archive; pack the adapter folder "
                "with `zip -r` or `tar czf`"
            ) from exc
        with tar:
            for member in tar:
                _tar_member(tar, member, dest, budget)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InvalidInput(
            f"the archive has a file and a folder under the same name ({exc.filename}); pack "
            f"the adapter folder again"
        ) from exc
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as exc:
        raise InvalidInput(f"the archive is corrupt ({exc}); pack the adapter again") from exc
    except (RuntimeError, NotImplementedError) as exc:
        # zipfile's words for encrypted members and unknown compression methods.
        raise InvalidInput(f"the archive cannot be unpacked ({exc}); use a plain zip") from exc


class _Budget:
    """Counts members and the bytes actually written, whatever the headers claim."""

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.bytes_left = max_bytes
        self.max_bytes = max_bytes
        self.files_left = max_files
        self.max_files = max_files

    def member(self) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise InvalidInput(
                f"the archive has more than {self.max_files} members; an adapter needs a few"
            )

    def take(self, n: int, name: str) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise InvalidInput(
                f"the archive unpacks to more than {self.max_bytes} bytes (at member {name!r}); "
                f"remove what the adapter does not need, or raise the size limit"
            )


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: _Budget) -> None:
    budget.member()
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise InvalidInput(_special(info.filename, "a symbolic link" if stat.S_ISLNK(mode) else ""))
    target = _member_path(info.filename, dest)
    if target is None:
        return
    if info.is_dir() or kind == stat.S_IFDIR:
        target.mkdir(parents=True, exist_ok=True)
        return
    with zf.open(info) as src:
        _write(src, target, info.filename, budget)


def _tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, budget: _Budget) -> None:
    budget.member()
    if member.issym():
        raise InvalidInput(_special(member.name, "a symbolic link"))
    if member.islnk():
        raise InvalidInput(_special(member.name, "a hard link"))
    if not (member.isreg() or member.isdir()):
        raise InvalidInput(_special(member.name, ""))
    target = _member_path(member.name, dest)
    if target is None:
        return
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    src = tar.extractfile(member)
    if src is None:  # isreg() members always have data; keep mypy and a broken tar honest
        raise InvalidInput(f"archive member {member.name!r} has no data; pack the adapter again")
    with src:
        _write(src, target, member.name, budget)


def _special(name: str, what: str) -> str:
    what = what or "not a plain file or folder (a device, fifo or link)"
    return f"archive member {name!r} is {what}; pack only the adapter's real files"


def _member_path(name: str, dest: Path) -> Path | None:
    """Where a member goes inside `dest`, or None for members that are skipped."""
    normal = name.replace("\\", "/")
    pure = PurePosixPath(normal)
    if not normal or "\x00" in normal:
        raise InvalidInput(f"archive member {name!r} has an empty or malformed name")
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", normal):
        raise InvalidInput(f"archive member {name!r} has an absolute path; pack relative paths")
    if ".." in pure.parts:
        raise InvalidInput(f"archive member {name!r} climbs out with '..'; pack relative paths")
    parts = [p for p in pure.parts if p != "."]
    if not parts:
        return None
    if parts[0] in IGNORED_TOP:
        return None
    target = dest.joinpath(*parts)
    # Redundant with the checks above unless `dest` itself is reached through a link.
    if not target.resolve().is_relative_to(dest):
        raise InvalidInput(f"archive member {name!r} would land outside the upload folder")
    return target


def _write(src: IO[bytes], target: Path, name: str, budget: _Budget) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL|O_NOFOLLOW: a repeated member name must not overwrite, nor follow a link.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError as exc:
        raise InvalidInput(f"archive member {name!r} appears twice; pack each file once") from exc
    with os.fdopen(fd, "wb") as out:
        for chunk in _chunks(src):
            budget.take(len(chunk), name)
            out.write(chunk)


def _chunks(src: IO[bytes]) -> Iterator[bytes]:
    while chunk := src.read(CHUNK_BYTES):
        yield chunk


def _empty(dest: Path) -> None:
    for entry in dest.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _adapter_folder(dest: Path) -> Path:
    if (dest / CONFIG_FILE).is_file():
        return dest
    top = [e for e in dest.iterdir() if e.name not in IGNORED_TOP]
    if len(top) == 1 and top[0].is_dir() and (top[0] / CONFIG_FILE).is_file():
        return top[0]
    raise InvalidInput(
        f"the archive holds no {CONFIG_FILE} at its top level or in a single top-level "
        f"folder; pack the adapter folder itself"
    )
