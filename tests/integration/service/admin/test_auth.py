"""The admin token: asked for on every admin endpoint, compared in constant time, refused as a
placeholder in production; without one the admin API is not mounted at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from ragtune.settings import Settings
from service.app import create_app
from tests.conftest import TinyModel
from tests.fixtures.api import api_settings
from tests.integration.service.admin.conftest import AdminApi, error_message

REF = "alpha@0123456789abcdef"
# (method, path, keyword arguments): a valid request apart from the credentials.
ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/admin/adapters", {}),
    ("POST", "/admin/adapters", {"json": {"path": "incoming/x", "name": "x"}}),
    ("POST", "/admin/adapters/upload?name=x", {"content": b"PK\x03\x04not-really"}),
    ("DELETE", f"/admin/adapters/{REF}", {}),
    ("POST", f"/admin/adapters/{REF}/load", {}),
    ("POST", f"/admin/adapters/{REF}/unload", {}),
    ("PUT", "/admin/aliases/tone", {"json": {"target": REF}}),
    ("POST", "/admin/aliases/tone/rollback", {}),
    ("GET", "/admin/status", {}),
    ("GET", "/admin/audit?limit=5", {}),
]
IDS = [f"{method} {path}" for method, path, _ in ENDPOINTS]


@pytest.mark.parametrize(("method", "path", "kwargs"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Basic YWRtaW46dGVzdA==", "Bearer", "Bearer ", "Token test-admin-token-5f1c"],
)
def test_missing_token_is_401_with_a_bearer_challenge(
    admin_api: AdminApi,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    authorization: str | None,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = admin_api.client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in error_message(response)
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(("method", "path", "kwargs"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize(
    "token", ["wrong", "test-admin-token-5f1", "test-admin-token-5f1cX", "TEST-ADMIN-TOKEN-5F1C"]
)
def test_wrong_token_is_403(
    admin_api: AdminApi, method: str, path: str, kwargs: dict[str, Any], token: str
) -> None:
    response = admin_api.client.request(
        method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
    )
    assert response.status_code == 403, response.text
    assert "WWW-Authenticate" not in response.headers
    assert error_message(response) == "the admin token is wrong"
    assert response.json()["error"]["type"] == "permission_error"


def test_refused_requests_change_nothing(admin_api: AdminApi) -> None:
    before = admin_api.client.get(
        "/admin/adapters", headers={"Authorization": "Bearer test-admin-token-5f1c"}
    ).json()
    for method, path, kwargs in ENDPOINTS:
        admin_api.client.request(method, path, headers={"Authorization": "Bearer no"}, **kwargs)
        admin_api.client.request(method, path, **kwargs)
    after = admin_api.client.get(
        "/admin/adapters", headers={"Authorization": "Bearer test-admin-token-5f1c"}
    ).json()
    assert after["revision"] == before["revision"]
    assert admin_api.leftovers() == []


def test_scheme_is_case_insensitive(admin_api: AdminApi) -> None:
    response = admin_api.client.get(
        "/admin/status", headers={"Authorization": "bearer test-admin-token-5f1c"}
    )
    assert response.status_code == 200, response.text


def test_malformed_body_without_token_is_still_401(admin_api: AdminApi) -> None:
    # Authentication comes before anything about the body is revealed.
    response = admin_api.client.post(
        "/admin/adapters",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 401, response.text


def test_no_admin_router_without_a_token(tiny_model: TinyModel, tmp_path: Path) -> None:
    settings = api_settings(tmp_path, tiny_model.path, admin={"token": None})
    assert settings.admin.token is None
    # Routing is decided by create_app; the lifespan (and its model loading) is not needed.
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    for method, path, kwargs in ENDPOINTS:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            response = client.request(method, path, headers=headers, **kwargs)
            assert response.status_code in (404, 405), (method, path, response.text)
            assert response.status_code == 404 or method != "GET"
    assert not any(p.startswith("/admin") for p in client.get("/openapi.json").json()["paths"])


@pytest.mark.parametrize("token", ["changeme", "CHANGEME", " change-me ", "secret", "token", ""])
def test_production_refuses_placeholder_tokens(tmp_path: Path, token: str) -> None:
    with pytest.raises(ValidationError, match=r"admin\.token is a placeholder"):
        Settings(data_dir=tmp_path, environment="production", admin={"token": token})


def test_production_accepts_a_real_token_and_development_a_placeholder(tmp_path: Path) -> None:
    real = Settings(data_dir=tmp_path, environment="production", admin={"token": "x7-long-real"})
    assert real.admin.token is not None
    dev = Settings(data_dir=tmp_path, environment="development", admin={"token": "changeme"})
    assert dev.admin.token is not None
