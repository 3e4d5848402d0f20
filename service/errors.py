"""Domain errors mapped to HTTP in one place, in OpenAI's error shape on every endpoint:
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ragtune.errors import (
    ConfigMismatch,
    GateFailed,
    InvalidInput,
    MissingDependency,
    NotFound,
    RagtuneError,
    UpstreamRejected,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

# (HTTP status, OpenAI error type) per domain error; the first match wins.
_MAPPING: list[tuple[type[RagtuneError], int, str]] = [
    (InvalidInput, 422, "invalid_request_error"),
    (NotFound, 404, "not_found_error"),
    (ConfigMismatch, 409, "conflict_error"),
    (GateFailed, 409, "conflict_error"),
    (UpstreamUnavailable, 503, "service_unavailable_error"),
    # Qdrant refused ragtune's API key: the server's configuration, not the caller, is wrong.
    (UpstreamRejected, 502, "upstream_error"),
    (MissingDependency, 503, "service_unavailable_error"),
]
# Where FastAPI found a field; the caller knows the field by its name alone.
_LOCATIONS = {"body", "query", "path", "header"}
_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
}


class CodedHTTPException(HTTPException):
    """An HTTPException whose OpenAI error body carries a `code` (e.g. "invalid_api_key")."""

    def __init__(
        self, status_code: int, detail: str, code: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code, detail, headers)
        self.code = code


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def describe(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and body for an error raised while answering (also used mid-stream)."""
    if isinstance(exc, RagtuneError):
        for cls, status, type_ in _MAPPING:
            if isinstance(exc, cls):
                return status, error_body(str(exc), type_, code=type(exc).__name__)
    log.error("unexpected error while answering", exc_info=exc)
    return 500, error_body(
        "internal error while answering; the server log has the details",
        "internal_error",
    )


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register the handlers that turn every error into a JSON error body."""

    def respond(request: Request, status: int, body: dict[str, Any]) -> JSONResponse:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.errors.labels(body["error"]["type"]).inc()
        headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RagtuneError)
    async def domain(request: Request, exc: RagtuneError) -> JSONResponse:
        status, body = describe(exc)
        return respond(request, status, body)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = _field(first)
        param = ".".join(loc) or None
        message = "; ".join(_one(e) for e in errors[:5])
        if len(errors) > 5:
            message += f"; and {len(errors) - 5} more"
        return respond(request, 422, error_body(message, "invalid_request_error", param))

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's vague 400 for a JSON body that is not UTF-8: invalid JSON, like any.
            message = f"the body is not valid JSON (not UTF-8 text: {exc.__cause__.reason})"
            return respond(request, 422, error_body(message, "invalid_request_error"))
        type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request_error")
        code = exc.code if isinstance(exc, CodedHTTPException) else None
        response = respond(request, exc.status_code, error_body(str(exc.detail), type_, code=code))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        status, body = describe(exc)
        return respond(request, status, body)


def _one(error: Any) -> str:
    loc = ".".join(_field(error))
    message = str(error.get("msg", "is invalid"))
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', message)})"
    if not loc and error.get("type") in ("model_attributes_type", "dict_type"):
        return "the body must be a JSON object (send Content-Type: application/json)"
    if error.get("type") == "extra_forbidden":
        return f"{loc}: unknown field"
    return f"{loc}: {message}" if loc else message


def _field(error: Any) -> list[str]:
    """The field's path without FastAPI's leading location (body, query, path, header)."""
    loc = [str(p) for p in error.get("loc", ())]
    return loc[1:] if loc and loc[0] in _LOCATIONS else loc
