"""API keys for the user endpoints (api.keys), checked the way OpenAI clients expect: a bearer
token, else 401 in OpenAI's error shape. /admin has a token of its own (service/admin)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.routing import APIRoute, APIRouter
from pydantic import SecretStr

from service.deps import state_of
from service.errors import CodedHTTPException

MISSING_KEY = (
    "this endpoint needs an API key: send 'Authorization: Bearer <API key>' "
    "(the openai client sends it from api_key=)"
)
WRONG_KEY = (
    "Incorrect API key provided: send 'Authorization: Bearer <API key>' with a key this "
    "server accepts"
)


def authenticate(request: Request) -> None:
    """Returns if api.keys is empty or the caller sent one of them as a bearer token; else 401."""
    keys = state_of(request).settings.api.keys
    if not keys:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, MISSING_KEY, headers={"WWW-Authenticate": "Bearer"})
    if not accepts(keys, given):
        # RFC 6750's answer to a token that was sent but is not valid.
        raise CodedHTTPException(
            401,
            WRONG_KEY,
            code="invalid_api_key",  # OpenAI's code for it
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def accepts(keys: Sequence[SecretStr], given: str) -> bool:
    """Whether `given` is one of `keys`, in time that says nothing about which key, or how
    much of it, matched: every key is compared, as equal-length digests."""
    digest = hashlib.sha256(given.encode()).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(
            digest, hashlib.sha256(key.get_secret_value().encode()).digest()
        )
    return found


class ApiKeyRoute(APIRoute):
    """Checks the key before FastAPI reads the body: a dependency would run only after the
    JSON is parsed, so an unauthenticated caller would learn about the body's validity."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            authenticate(request)
            return await handler(request)

        return authenticated


def document_api_keys(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Declare the bearer scheme in the OpenAPI schema, on the operations of `routers` (as
    included, without a prefix) that need a key, so that /docs offers to send one
    ("Authorize"). Only called when api.keys is set."""
    build = app.openapi
    protected = {
        route.path
        for router in routers
        for route in router.routes
        if isinstance(route, ApiKeyRoute)
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["apiKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the server's API keys (api.keys)",
            }
            for path, operations in schema.get("paths", {}).items():
                if path in protected:
                    for operation in operations.values():
                        operation["security"] = [{"apiKey": []}]
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
