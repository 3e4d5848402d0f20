"""What the OpenAPI schema says about errors: the body every error has (OpenAI's shape, built
by service/errors.py) and, per status, when an endpoint answers with it. Routers list the
statuses they really return (`responses=errors(404, 422)`); tests/integration/service/
test_fuzz.py holds every answer to the schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str = Field(description="What was wrong and what to do about it.")
    type: str = Field(description='OpenAI\'s error type, e.g. "invalid_request_error".')
    param: str | None = Field(description="The request field at fault (422), if one is.")
    code: str | None = Field(description='A finer reason, e.g. "invalid_api_key".')


class ErrorResponse(BaseModel):
    """Every error answer's body, on every endpoint (OpenAI's error shape)."""

    error: ErrorDetail


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (api.retry_after_s).",
        "schema": {"type": "integer"},
        "required": True,
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with: Bearer.",
        "schema": {"type": "string"},
    }
}
# When each status is sent; the headers it always carries.
_STATUSES: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body cannot be used as sent (an empty upload).", {}),
    401: ("No credentials, or an API key the server does not accept.", _WWW_AUTHENTICATE),
    403: ("The admin token is wrong.", {}),
    404: ("A named thing (route, adapter, alias, document, collection) does not exist.", {}),
    408: ("The body did not arrive in time (api.body_timeout_s); the connection closes.", {}),
    409: (
        "The request conflicts with the server's state: stored data made with other settings, "
        "an alias a route serves, or a failed eval gate.",
        {},
    ),
    413: ("The body is larger than the server's limit.", {}),
    422: (
        "The request is malformed (not JSON, too deeply nested, a field invalid: `param` "
        "names it) or asks for something the route does not allow.",
        {},
    ),
    502: ("A server ragtune depends on refused its credentials (a configuration error).", {}),
    503: (
        "A dependency (the generation backend, Qdrant, a model) is unavailable or did not "
        "answer in time; retry later.",
        _RETRY_AFTER,
    ),
}
# Every request that carries a body may meet the body's limits (service/limits.py).
BODY = (408, 413, 422)
# Answers that call the generation backend or the vector store.
UPSTREAM = (502, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses` documenting `statuses` with the error body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        description, headers = _STATUSES[status]
        responses[status] = {"model": ErrorResponse, "description": description}
        if headers:
            responses[status]["headers"] = headers
    return responses


class StreamErrorDetail(ErrorDetail):
    status: int = Field(description="The status the error would have had before the 200.")


class StreamError(BaseModel):
    """A stream's last event (before [DONE]) when answering failed after the 200 was sent."""

    error: StreamErrorDetail


def event_stream(description: str, *events: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A 200 that is sent as server-sent events with `stream: true`: each event's data is one
    of `events` as JSON, the last one `[DONE]` (service/sse.py)."""
    payload = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {
            "anyOf": [_inlined(event.model_json_schema(mode="serialization")) for event in events]
        },
    }
    event = {
        "type": "object",
        "description": description,
        "properties": {
            "data": {"anyOf": [{"const": "[DONE]"}, payload]},
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
        "required": ["data"],
    }
    return {200: {"content": {"text/event-stream": {"schema": event}}}}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` written in place: a schema embedded in the OpenAPI document
    cannot refer to its own root."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            siblings = {key: resolve(value) for key, value in node.items() if key != "$ref"}
            return {**resolve(definitions[ref.removeprefix("#/$defs/")]), **siblings}
        return {key: resolve(value) for key, value in node.items()}

    resolved: dict[str, Any] = resolve(schema)
    return resolved
