"""POST /admin/adapters/upload: a zip or tar(.gz) of an adapter folder as the raw body.
Members that could write outside the upload folder are refused, the size limit holds while
the body streams in, and nothing is left behind in the scratch folders."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from starlette.types import Message, Scope

from adapters.registry import SUMS_FILE
from tests.fixtures.api import ADMIN_TOKEN, admin_headers
from tests.integration.service.admin.conftest import (
    MAX_UPLOAD_BYTES,
    AdminApi,
    error_message,
)

if TYPE_CHECKING:
    from httpx2 import Response

UPLOAD = "/admin/adapters/upload"


def files_of(folder: Path) -> dict[str, bytes]:
    """An adapter folder's files; a stored version's without the registry's checksums."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != SUMS_FILE}


def make_zip(members: dict[str, bytes], prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(prefix + name, data)
    return buffer.getvalue()


def make_tar(members: dict[str, bytes], prefix: str = "", mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def upload(admin_api: AdminApi, body: Any, name: str, **params: str) -> Response:
    return admin_api.client.post(
        UPLOAD, params={"name": name, **params}, content=body, headers=admin_headers()
    )


def assert_clean(admin_api: AdminApi, name: str) -> None:
    assert name not in admin_api.store_names()
    assert admin_api.leftovers() == []


@pytest.fixture
def alpha(admin_api: AdminApi) -> dict[str, bytes]:
    return files_of(admin_api.model.adapters["alpha"])


@pytest.mark.parametrize(
    ("pack", "prefix"),
    [
        (make_zip, ""),
        (make_zip, "my-adapter/"),
        (make_tar, "my-adapter/"),
        (make_tar, "./"),
        (lambda m, p: make_tar(m, p, "w"), ""),
    ],
    ids=["zip", "zip-in-folder", "tar.gz-in-folder", "tar.gz-dot", "plain-tar"],
)
def test_upload_registers_the_same_version_as_the_folder(
    admin_api: AdminApi, alpha: dict[str, bytes], pack: Any, prefix: str
) -> None:
    name = admin_api.unique("up")
    response = upload(admin_api, pack(alpha, prefix), name, description="uploaded")
    assert response.status_code == 201, response.text
    record = response.json()["adapter"]
    assert record["name"] == name
    assert record["rank"] == 8
    assert record["description"] == "uploaded"
    assert response.json()["alias"] is None
    stored = admin_api.root / "store" / name / record["version"]
    assert files_of(stored) == alpha
    # Content-addressed: the same files registered from a folder are the same version.
    assert admin_api.register(admin_api.stage("alpha"), name) == record
    assert admin_api.leftovers() == []


def test_upload_with_alias_serves_it(admin_api: AdminApi, alpha: dict[str, bytes]) -> None:
    name, alias = admin_api.unique("up"), admin_api.unique("up-alias")
    response = upload(admin_api, make_zip(alpha), name, alias=alias)
    assert response.status_code == 201, response.text
    ref = f"{name}@{response.json()['adapter']['version']}"
    assert response.json()["alias"]["target"] == ref
    status = admin_api.client.get("/admin/status", headers=admin_headers()).json()
    assert status["active"][alias] == ref
    assert ref in status["backends"][0]["loaded"]


def test_bad_name_or_alias_is_refused_before_the_body_is_read(
    admin_api: AdminApi, alpha: dict[str, bytes]
) -> None:
    for params in ({"name": "../x"}, {"name": admin_api.unique("ok"), "alias": "a b"}):
        response = admin_api.client.post(
            UPLOAD, params=params, content=make_zip(alpha), headers=admin_headers()
        )
        assert response.status_code == 422, response.text
        assert "is not allowed" in error_message(response)
    assert admin_api.leftovers() == []


def test_name_is_required(admin_api: AdminApi, alpha: dict[str, bytes]) -> None:
    response = admin_api.client.post(UPLOAD, content=make_zip(alpha), headers=admin_headers())
    assert response.status_code == 422, response.text
    assert "name: Field required" in error_message(response)


# -- hostile archives -----------------------------------------------------------------------


def zip_with(alpha: dict[str, bytes], member: zipfile.ZipInfo, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in alpha.items():
            zf.writestr(name, content)
        zf.writestr(member, data)
    return buffer.getvalue()


def tar_with(alpha: dict[str, bytes], member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in alpha.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return buffer.getvalue()


def zip_symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so external_attr carries the mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.fixture
def outside(admin_api: AdminApi) -> Path:
    """Where an escaping member would land (the app's home, beside the adapter root)."""
    return admin_api.settings.data_dir.parent


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda a, o: zip_with(a, zipfile.ZipInfo("../evil.txt"), b"x"), "climbs out with '..'"),
        (
            lambda a, o: zip_with(a, zipfile.ZipInfo("a/../../../evil.txt"), b"x"),
            "climbs out with '..'",
        ),
        (lambda a, o: zip_with(a, zipfile.ZipInfo("..\\evil.txt"), b"x"), "climbs out with '..'"),
        (
            lambda a, o: zip_with(a, zipfile.ZipInfo(f"{o}/evil.txt"), b"x"),
            "has an absolute path",
        ),
        (lambda a, o: zip_with(a, zipfile.ZipInfo("C:/evil.txt"), b"x"), "has an absolute path"),
        (lambda a, o: zip_with(a, zip_symlink("evil", "/etc"), b"/etc"), "is a symbolic link"),
        (lambda a, o: tar_with(a, tar_member("../evil.txt"), b"x"), "climbs out with '..'"),
        (lambda a, o: tar_with(a, tar_member(f"{o}/evil.txt"), b"x"), "has an absolute path"),
        (
            lambda a, o: tar_with(a, tar_member("evil", tarfile.SYMTYPE, str(o))),
            "is a symbolic link",
        ),
        (
            lambda a, o: tar_with(a, tar_member("evil", tarfile.LNKTYPE, "/etc/passwd")),
            "is a hard link",
        ),
        (
            lambda a, o: tar_with(a, tar_member("evil", tarfile.FIFOTYPE)),
            "is not a plain file or folder",
        ),
    ],
    ids=[
        "zip-slip",
        "zip-slip-nested",
        "zip-slip-backslash",
        "zip-absolute",
        "zip-drive",
        "zip-symlink",
        "tar-slip",
        "tar-absolute",
        "tar-symlink",
        "tar-hardlink",
        "tar-fifo",
    ],
)
def test_hostile_members_are_refused(
    admin_api: AdminApi, alpha: dict[str, bytes], outside: Path, make: Any, problem: str
) -> None:
    name = admin_api.unique("hostile")
    response = upload(admin_api, make(alpha, outside), name)
    assert response.status_code == 422, response.text
    message = error_message(response)
    assert "archive member" in message
    assert problem in message
    assert_clean(admin_api, name)
    assert not list(outside.rglob("evil*"))
    assert not list(outside.parent.glob("evil*"))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"definitely not an archive", "neither a zip nor a tar(.gz) archive"),
        (b"PK\x03\x04" + b"\0" * 64, "the archive is corrupt"),
        (make_zip({"README.md": b"hello"}), "holds no adapter_config.json"),
        (make_tar({"a/adapter_config.json": b"{}", "b/x": b""}), "holds no adapter_config.json"),
    ],
    ids=["garbage", "broken-zip", "no-config", "two-folders"],
)
def test_archives_that_hold_no_adapter(admin_api: AdminApi, body: bytes, problem: str) -> None:
    name = admin_api.unique("junk")
    response = upload(admin_api, body, name)
    assert response.status_code == 422, response.text
    assert problem in error_message(response)
    assert_clean(admin_api, name)


def test_uploaded_adapter_is_validated_like_a_folder(
    admin_api: AdminApi, alpha: dict[str, bytes]
) -> None:
    name = admin_api.unique("pickled")
    response = upload(admin_api, make_tar({**alpha, "adapter_model.bin": b"\x80\x04."}), name)
    assert response.status_code == 422, response.text
    assert "contains adapter_model.bin, a pickle file" in error_message(response)
    assert_clean(admin_api, name)


# -- size ---------------------------------------------------------------------------------


def test_oversized_body_is_413(admin_api: AdminApi) -> None:
    name = admin_api.unique("huge")
    response = upload(admin_api, b"\0" * (MAX_UPLOAD_BYTES + 1), name)
    assert response.status_code == 413, response.text
    assert f"limit of {MAX_UPLOAD_BYTES} bytes" in error_message(response)
    assert_clean(admin_api, name)


def test_oversized_chunked_body_is_413(admin_api: AdminApi) -> None:
    name = admin_api.unique("huge")

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_UPLOAD_BYTES // 50_000 + 2):
            yield b"\0" * 50_000

    response = upload(admin_api, chunks(), name)
    assert response.status_code == 413, response.text
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert f"limit of {MAX_UPLOAD_BYTES} bytes" in error_message(response)
    assert_clean(admin_api, name)


def test_size_limit_holds_while_the_body_streams(admin_api: AdminApi) -> None:
    """Straight through ASGI (TestClient joins a streamed body into one message): the app
    stops reading once past the limit and answers 413, without reading the rest."""
    name = admin_api.unique("stream")
    piece = b"\0" * 16_384
    total = 4 * MAX_UPLOAD_BYTES // len(piece)
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": piece, "more_body": pulled < total}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": UPLOAD,
        "raw_path": UPLOAD.encode(),
        "query_string": f"name={name}".encode(),
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
        "state": admin_api.client.app_state.copy(),
    }

    async def request() -> None:
        await admin_api.client.app(scope, receive, send)

    assert admin_api.client.portal is not None
    admin_api.client.portal.call(request)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    assert pulled == MAX_UPLOAD_BYTES // len(piece) + 1
    assert_clean(admin_api, name)


def test_empty_body_is_400(admin_api: AdminApi) -> None:
    name = admin_api.unique("empty")
    response = upload(admin_api, b"", name)
    assert response.status_code == 400, response.text
    assert "the body is empty" in error_message(response)
    assert_clean(admin_api, name)


def test_unpacked_size_is_limited_too(admin_api: AdminApi, alpha: dict[str, bytes]) -> None:
    """A small archive that unpacks to more than adapters.max_adapter_bytes (a zip bomb)."""
    limit = admin_api.settings.adapters.max_adapter_bytes
    bomb = b"\0" * (limit + 1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for member, data in alpha.items():
            zf.writestr(member, data)
        zf.writestr("padding.bin.txt", bomb)
    body = buffer.getvalue()
    assert len(body) < MAX_UPLOAD_BYTES
    name = admin_api.unique("bomb")
    response = upload(admin_api, body, name)
    assert response.status_code == 422, response.text
    assert "unpacks to more than" in error_message(response)
    assert_clean(admin_api, name)
