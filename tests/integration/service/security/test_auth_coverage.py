"""Every operation the app serves is enumerated from the app itself, so an endpoint added later
is covered without editing a list: each admin operation refuses a missing token (401) and a
wrong one (403), each user operation refuses a missing or wrong API key (401), and only the
probes and the API's own documentation are open. The detailed cases (schemes, near-miss
tokens, keys kept apart) are in admin/test_auth.py and api/test_auth.py."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.auth import MISSING_KEY, WRONG_KEY
from tests.fixtures.api import admin_headers
from tests.integration.service.security.conftest import KEYS, SecurityApi

# Open by design: liveness/readiness probes, Prometheus, and the schema and its viewers.
OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
# A plausible value for each path parameter (any value: the credentials are checked first).
PARAMETER = re.compile(r"\{[^}]+\}")


def operations(api: SecurityApi) -> list[tuple[str, str]]:
    """(method, path with parameters filled) for every operation the app declares (its
    OpenAPI schema: what FastAPI builds from the routes it serves)."""
    paths = api.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return [
        (method.upper(), PARAMETER.sub("tone@0123456789abcdef", path))
        for path, item in paths.items()
        for method in item
    ]


def admin_operations(api: SecurityApi) -> list[tuple[str, str]]:
    return [(m, p) for m, p in operations(api) if p.startswith("/admin")]


def user_operations(api: SecurityApi) -> list[tuple[str, str]]:
    return [(m, p) for m, p in operations(api) if not p.startswith("/admin") and p not in OPEN]


def send(api: SecurityApi, method: str, path: str, **headers: str) -> Any:
    # A body that would be valid for none of them: authentication comes before the body.
    body = b'{"path": "x"}' if method in ("POST", "PUT") else None
    return api.client.request(method, path, headers=headers, content=body)


def test_the_enumeration_finds_the_known_operations(security_api: SecurityApi) -> None:
    admin = admin_operations(security_api)
    users = user_operations(security_api)
    assert len(admin) >= 11, admin
    assert ("DELETE", "/admin/aliases/tone@0123456789abcdef") in admin
    assert ("POST", "/admin/adapters/upload") in admin
    assert {("POST", "/v1/chat"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")} <= set(
        users
    )
    assert ("POST", "/v1/feedback") in users


def test_every_admin_operation_refuses_a_missing_or_wrong_token(
    security_api: SecurityApi,
) -> None:
    before = security_api.admin("GET", "/admin/audit?limit=1000").json()["entries"]
    revision = security_api.admin("GET", "/admin/adapters").json()["revision"]
    for method, path in admin_operations(security_api):
        for authorization in ({}, {"Authorization": "Basic YWRtaW46eA=="}):
            response = send(security_api, method, path, **authorization)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["error"]["type"] == "authentication_error"
        # An API key is a wrong admin token too.
        for token in ("wrong-token", KEYS[0]):
            response = send(security_api, method, path, Authorization=f"Bearer {token}")
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"] == {
                "message": "the admin token is wrong",
                "type": "permission_error",
                "param": None,
                "code": None,
            }
    # Nothing was done, nor audited as done.
    assert security_api.admin("GET", "/admin/adapters").json()["revision"] == revision
    assert security_api.admin("GET", "/admin/audit?limit=1000").json()["entries"] == before


def test_every_user_operation_refuses_a_missing_or_wrong_key(security_api: SecurityApi) -> None:
    asked = len(security_api.backend.requests)
    for method, path in user_operations(security_api):
        response = send(security_api, method, path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["message"] == MISSING_KEY
        for key in ("wrong-key-0123456789", admin_headers()["Authorization"].split()[1]):
            response = send(security_api, method, path, Authorization=f"Bearer {key}")
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["message"] == WRONG_KEY
            assert response.json()["error"]["code"] == "invalid_api_key"
    assert len(security_api.backend.requests) == asked


def test_a_right_key_passes_every_user_operation(security_api: SecurityApi) -> None:
    """The other side of the refusals: past the key, each answers as itself (never 401)."""
    for method, path in user_operations(security_api):
        response = security_api.user(method, path, content=b"{}")
        assert response.status_code not in (401, 403), (method, path, response.text)
        assert response.status_code < 500, (method, path, response.text)


@pytest.mark.parametrize("path", sorted(OPEN - {"/docs/oauth2-redirect", "/redoc"}))
def test_the_open_paths_need_nothing(security_api: SecurityApi, path: str) -> None:
    assert security_api.client.get(path).status_code == 200
