"""Hostile adapter archives beyond admin/test_upload.py's (which covers '..' and absolute
members, symbolic and hard links, a fifo and a zip bomb): a tar.gz bomb, a zip whose headers
understate what it unpacks to, a flood of members, a traversal hidden in a PAX header, a link
followed by a file through it, a device, UNC paths. Each is refused with 422 and a message
naming the member, nothing lands outside the registry, nothing is left in its scratch."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.service.security.conftest import (
    MAX_ADAPTER_BYTES,
    MAX_UPLOAD_BYTES,
    SecurityApi,
)

Archive = Callable[[dict[str, bytes]], bytes]
# What an escaping member would write, wherever it pointed.
ESCAPED = "ragtune-escaped-7f3a.txt"


def adapter_files(api: SecurityApi) -> dict[str, bytes]:
    folder = api.settings.adapters_root() / "incoming" / "tone"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def regular(name: str, data: bytes, **pax: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.pax_headers = pax
    return info, data


def special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def with_adapter(files: dict[str, bytes], *extra: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    return tar_gz([regular(n, d) for n, d in files.items()] + list(extra))


def tar_bomb(files: dict[str, bytes]) -> bytes:
    # 8 MB of zeros in one member: gzip makes it ~8 kB, a fraction of the upload limit.
    return with_adapter(files, regular("weights.txt", b"\0" * (8 * MAX_ADAPTER_BYTES)))


def zip_understating(files: dict[str, bytes]) -> bytes:
    """A zip whose headers say its big member holds 10 bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("notes.txt", b"\0" * (4 * MAX_ADAPTER_BYTES))
    raw = bytearray(buffer.getvalue())
    # The uncompressed size, in the member's local header and in its (last) central entry.
    info = zipfile.ZipFile(io.BytesIO(bytes(raw))).getinfo("notes.txt")
    struct.pack_into("<I", raw, info.header_offset + 22, 10)
    struct.pack_into("<I", raw, raw.rfind(b"PK\x01\x02") + 24, 10)
    return bytes(raw)


def member_flood(files: dict[str, bytes]) -> bytes:
    return with_adapter(files, *(regular(f"x/{i}.txt", b"") for i in range(300)))


def pax_traversal(files: dict[str, bytes]) -> bytes:
    # The ustar name is harmless; the PAX header's path, which tar readers prefer, is not.
    return with_adapter(files, regular("notes.txt", b"x", path=f"../../{ESCAPED}"))


def link_then_file(files: dict[str, bytes]) -> bytes:
    return with_adapter(
        files, special("evil", tarfile.SYMTYPE, "/tmp"), regular(f"evil/{ESCAPED}", b"x")
    )


def device(files: dict[str, bytes]) -> bytes:
    return with_adapter(files, special("evil", tarfile.CHRTYPE))


def internal_hard_link(files: dict[str, bytes]) -> bytes:
    # Even one pointing inside the archive: a hard link is never created.
    return with_adapter(files, special("evil", tarfile.LNKTYPE, "adapter_config.json"))


def zip_unc(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"\\\\server\\share\\{ESCAPED}", b"x")
    return buffer.getvalue()


CASES: dict[str, tuple[Archive, str]] = {
    "tar-gz-bomb": (tar_bomb, f"unpacks to more than {MAX_ADAPTER_BYTES} bytes"),
    "zip-understated-size": (zip_understating, "the archive is corrupt"),
    "member-flood": (member_flood, "more than 256 members"),
    "pax-traversal": (pax_traversal, "climbs out with '..'"),
    "link-then-file": (link_then_file, "'evil' is a symbolic link"),
    "device": (device, "'evil' is not a plain file or folder"),
    "internal-hard-link": (internal_hard_link, "'evil' is a hard link"),
    "zip-unc-path": (zip_unc, "has an absolute path"),
}


@pytest.mark.parametrize(("make", "problem"), CASES.values(), ids=CASES.keys())
def test_hostile_archive_is_refused_and_leaves_nothing(
    security_api: SecurityApi, make: Archive, problem: str
) -> None:
    body = make(adapter_files(security_api))
    assert len(body) < MAX_UPLOAD_BYTES  # refused for what it holds, not for its size
    root = security_api.settings.adapters_root()
    before = registry_files(root)
    response = security_api.admin(
        "POST", "/admin/adapters/upload", params={"name": "hostile"}, content=body
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert problem in error["message"]
    assert error["type"] == "invalid_request_error"
    # Nothing registered or left in the registry (its scratch folders included), nothing
    # written where an escaping member points.
    assert registry_files(root) == before
    for where in (security_api.outside.parent, Path("/tmp")):
        assert not (where / ESCAPED).exists(), where
    assert not list(security_api.outside.rglob(ESCAPED))
    # The refusal is in the audit log, with its reason.
    [last] = security_api.admin("GET", "/admin/audit?limit=1").json()["entries"]
    assert (last["action"], last["target"], last["result"]) == ("upload", "hostile", "refused")
    assert problem in last["detail"]


def registry_files(root: Path) -> dict[str, bytes]:
    """Every file under the adapter root but the audit log, with its content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "audit.jsonl"
    }
