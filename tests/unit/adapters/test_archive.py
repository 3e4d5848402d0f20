"""Archive uploads and user paths: only plain files, only inside the destination, on a budget."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from adapters.archive import extract_archive, resolve_under
from ragtune.errors import InvalidInput

MB = 1024 * 1024
ADAPTER = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"x" * 100}


def all_paths(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "work" / "dest"


def make_zip(path: Path, members: dict[str, bytes], attrs: dict[str, int] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if attrs and name in attrs:
                info.external_attr = attrs[name] << 16
            zf.writestr(info, data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def tar_special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def refuse(
    archive: Path, dest: Path, match: str, max_bytes: int = MB, max_files: int = 256
) -> None:
    """Extraction fails with `match`, leaves `dest` empty and writes nothing anywhere else."""
    before = all_paths(archive.parent)
    with pytest.raises(InvalidInput, match=match):
        extract_archive(archive, dest, max_bytes=max_bytes, max_files=max_files)
    outside = {p for p in all_paths(archive.parent) if not p.is_relative_to(dest)}
    assert outside == before | {dest.parent}
    assert list(dest.iterdir()) == []


def test_zip_with_a_top_level_folder(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {f"my-adapter/{k}": v for k, v in ADAPTER.items()})
    folder = extract_archive(archive, dest, max_bytes=MB)
    assert folder == dest / "my-adapter"
    assert (folder / "adapter_model.safetensors").read_bytes() == b"x" * 100


def test_tar_gz_at_the_top_level(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [("./", b""), *ADAPTER.items()])
    assert extract_archive(archive, dest, max_bytes=MB) == dest
    assert (dest / "adapter_config.json").read_bytes() == ADAPTER["adapter_config.json"]


def test_plain_tar_and_macos_junk(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in [*ADAPTER.items(), ("__MACOSX/._adapter_config.json", b"junk")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert extract_archive(archive, dest, max_bytes=MB) == dest
    assert not (dest / "__MACOSX").exists()


@pytest.mark.parametrize("name", ["../evil", "ok/../../evil", "..\\evil"])
def test_zip_slip(tmp_path: Path, dest: Path, name: str) -> None:
    archive = make_zip(tmp_path / "a.zip", {**ADAPTER, name: b"pwned"})
    refuse(archive, dest, "climbs out with '..'")
    assert not (tmp_path / "work" / "evil").exists()


def test_tar_slip(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [*ADAPTER.items(), ("../evil", b"pwned")])
    refuse(archive, dest, "climbs out with '..'")


def test_absolute_member_in_zip(tmp_path: Path, dest: Path) -> None:
    target = tmp_path / "abs-evil"
    archive = make_zip(tmp_path / "a.zip", {**ADAPTER, str(target): b"pwned"})
    refuse(archive, dest, "has an absolute path")
    assert not target.exists()


def test_absolute_member_in_tar(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [(str(tmp_path / "abs-evil"), b"pwned")])
    refuse(archive, dest, "has an absolute path")


def test_symlink_in_tar(tmp_path: Path, dest: Path) -> None:
    link = tar_special("adapter_model.safetensors", tarfile.SYMTYPE, "/etc/passwd")
    archive = make_tar(tmp_path / "a.tar.gz", [link])
    refuse(archive, dest, "is a symbolic link")


def test_symlink_in_zip(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(
        tmp_path / "a.zip",
        {**ADAPTER, "link": b"/etc/passwd"},
        attrs={"link": stat.S_IFLNK | 0o777},
    )
    refuse(archive, dest, "'link' is a symbolic link")


def test_hardlink_in_tar(tmp_path: Path, dest: Path) -> None:
    link = tar_special("adapter_model.safetensors", tarfile.LNKTYPE, "/etc/passwd")
    refuse(make_tar(tmp_path / "a.tar.gz", [link]), dest, "is a hard link")


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_devices_and_fifos_in_tar(tmp_path: Path, dest: Path, kind: bytes) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [tar_special("dev", kind)])
    refuse(archive, dest, "not a plain file or folder")


def test_member_larger_than_the_budget(tmp_path: Path, dest: Path) -> None:
    # 3 MB of zeros compresses to a few kilobytes: the archive itself looks harmless.
    archive = make_zip(tmp_path / "a.zip", {**ADAPTER, "big": b"\0" * (3 * MB)})
    assert archive.stat().st_size < 50_000
    refuse(archive, dest, "unpacks to more than 1048576 bytes")


def test_many_small_members_over_the_budget(tmp_path: Path, dest: Path) -> None:
    members = {f"f{i}": b"\0" * 100_000 for i in range(20)}
    refuse(make_zip(tmp_path / "a.zip", members), dest, "more than 1048576 bytes")


def test_too_many_members(tmp_path: Path, dest: Path) -> None:
    members = [(f"f{i}", b"x") for i in range(11)]
    refuse(make_tar(tmp_path / "a.tar.gz", members), dest, "more than 10 members", max_files=10)


def test_header_sizes_are_not_trusted(tmp_path: Path, dest: Path) -> None:
    """A zip whose headers declare 10 bytes for a 3 MB member is refused, and never writes
    more than the budget."""
    archive = make_zip(tmp_path / "a.zip", {"adapter_config.json": b"\0" * (3 * MB)})
    data = bytearray(archive.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 10)  # local header: uncompressed size
    struct.pack_into("<I", data, central + 24, 10)  # central directory: uncompressed size
    archive.write_bytes(bytes(data))
    refuse(archive, dest, "corrupt|more than")


def test_duplicate_member(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [*ADAPTER.items(), ("adapter_config.json", b"{}")])
    refuse(archive, dest, "appears twice")


def test_not_an_archive(tmp_path: Path, dest: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    refuse(junk, dest, "neither a zip nor a tar")


def test_archive_without_adapter_config(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"a/x": b"1", "b/y": b"2"})
    with pytest.raises(InvalidInput, match=r"holds no adapter_config\.json"):
        extract_archive(archive, dest, max_bytes=MB)


def test_destination_must_be_empty(tmp_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    (dest / "old").write_text("x")
    archive = make_zip(tmp_path / "a.zip", ADAPTER)
    with pytest.raises(InvalidInput, match="is not empty"):
        extract_archive(archive, dest, max_bytes=MB)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "models" / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "escape")
    os.symlink(root / "models", root / "inner")
    return root


def test_resolve_under_accepts_paths_inside(root: Path) -> None:
    assert resolve_under(root, "models/a") == (root / "models" / "a").resolve()
    assert resolve_under(root, "./models/new.txt") == (root / "models" / "new.txt").resolve()
    # A link that stays inside the root is fine.
    assert resolve_under(root, "inner/a") == (root / "models" / "a").resolve()


@pytest.mark.parametrize(
    ("user_path", "reason"),
    [
        ("../outside", r"contains '\.\.'"),
        ("models/../../outside", r"contains '\.\.'"),
        ("/etc/passwd", "is absolute"),
        ("C:\\Windows", "is absolute"),
        ("escape/file", "outside .* through a symbolic link"),
        ("", "empty"),
    ],
)
def test_resolve_under_refuses_escapes(root: Path, user_path: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        resolve_under(root, user_path)
