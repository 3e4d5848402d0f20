"""What the schema fuzzing in test_fuzz.py runs on: the app's routes and credentials, the state
of a run (`Fuzz`), the steering that turns generated cases into ones the app answers, one
operation's run with its counts of (distinct) requests and statuses, and the run's report.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.python.asgi import ASGIClient
from schemathesis.schemas import APIOperation

from tests.fixtures.api import ADMIN_TOKEN
from tests.fixtures.tiny_model import YES_NO_SCHEMA

Operation = APIOperation[Any, Any, Any, Any]
API_KEY = "fuzz-api-key-7c2e9a41"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    # Negative cases (a body or parameter the schema forbids) get a 4xx, never a 2xx.
    negative_data_rejection,
]
# A request that takes longer hangs: the tiny model answers in well under a second.
TIMEOUT_S = 30.0
# Small answers keep the run short; the routes cover every kind of path through the service.
ROUTES = {
    "routes": {
        "chat": {
            "kind": "chat",
            "retrieval": {"collection": "docs", "top_k": 3, "context_tokens": 300},
            "prompt": {"system": "Sources:\n{context}", "user": "{question}"},
            "generation": {"max_tokens": 6},
            "overrides": {
                "adapters": ["base", "tone"],
                "filters": True,
                "mode": True,
                "max_top_k": 10,
            },
            "capture": {"sample": 1.0},
        },
        "condense": {
            "kind": "chat",
            "retrieval": {
                "collection": "docs",
                "top_k": 2,
                "context_tokens": 200,
                "query": {"mode": "condense", "turns": 2, "max_tokens": 6},
            },
            "prompt": {"system": "Sources:\n{context}", "user": "{question}"},
            "generation": {"max_tokens": 6},
        },
        "tone": {
            "kind": "chat",
            "adapter": "tone",
            "prompt": {"user": "{question}"},
            "generation": {"max_tokens": 6},
        },
        "yes-no": {
            "kind": "chat",
            "prompt": {"user": "{question}"},
            "output": {"type": "json", "schema": YES_NO_SCHEMA},
            "generation": {"max_tokens": 12},
        },
        "absent": {
            "kind": "chat",
            "retrieval": {"collection": "absent"},
            "prompt": {"system": "{context}", "user": "{question}"},
            "generation": {"max_tokens": 6},
        },
        "summarize": {
            "kind": "summarize",
            "retrieval": {"collection": "docs"},
            "prompt": {"user": "Summarize:\n{text}", "reduce": "Combine:\n{text}"},
            "generation": {"max_tokens": 6},
            "summarize": {"piece_tokens": 64, "piece_summary_tokens": 16, "max_input_tokens": 512},
            "overrides": {"filters": True},
        },
    }
}
MAX_TOKENS = 16  # api.max_tokens
MAX_TOP_K = 10  # the chat route's overrides.max_top_k
QUESTIONS = st.text(min_size=1, max_size=120).filter(str.strip)
# Adapter folders under the adapter root, for POST /admin/adapters.
STAGED = ["incoming/alpha", "incoming/beta", "incoming/too-big"]
ROUTE_FIELDS = {"/v1/chat": "route", "/v1/summarize": "route", "/v1/chat/completions": "model"}


@dataclass
class Fuzz:
    """The running app, its schema and what the run has seen so far."""

    schema: schemathesis.BaseSchema
    client: ASGIClient
    refs: list[str]
    aliases: list[str]
    archive: bytes  # a real adapter, zipped, for the upload
    # Per run (operation, generation mode, credentials): requests sent, and the distinct ones.
    sent: Counter[str] = field(default_factory=Counter)
    distinct: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    failures: list[str] = field(default_factory=list)
    answerable: int = 0  # bodies made answerable so far: every other one is streamed

    def operations(self) -> list[Operation]:
        operations = []
        for result in self.schema.get_all_operations():
            assert isinstance(result, Ok), result  # the schema is the app's own: it must load
            operations.append(result.ok())
        return operations

    def reset(self) -> None:
        self.sent.clear()
        self.distinct.clear()
        self.statuses.clear()
        self.seconds.clear()
        self.failures.clear()


def token_for(operation: Operation) -> str | None:
    """The token the operation needs: the admin token under /admin, else an API key."""
    if operation.path.startswith("/admin"):
        return ADMIN_TOKEN
    if operation.definition.raw.get("security"):
        return API_KEY
    return None


def _steer(fuzz: Fuzz, operation: Operation, draw: Callable[[Any], Any], case: Any) -> None:
    """Often replace a generated name by one the app knows, so requests reach past the 404s
    into retrieval, generation and the registry, and in half the generation requests undo
    what the server refuses for reasons no schema can state (only in positive cases: the
    case stays valid)."""
    params = case.path_parameters or {}
    if "ref" in params and draw(st.booleans()):
        params["ref"] = draw(st.sampled_from(fuzz.refs))
    if "alias" in params and draw(st.booleans()):
        params["alias"] = draw(st.sampled_from(fuzz.aliases))
    if operation.path == "/admin/adapters/upload" and draw(st.integers(0, 3)) == 0:
        case.body = fuzz.archive
        case.media_type = "application/octet-stream"
    body = case.body
    if not isinstance(body, dict):
        return
    if operation.path == "/admin/adapters" and draw(st.booleans()):
        body["path"] = draw(st.sampled_from(STAGED))
    if operation.path == "/admin/aliases/{alias}" and draw(st.booleans()):
        body["target"] = draw(st.sampled_from([*fuzz.refs, *fuzz.aliases]))
    route_field = ROUTE_FIELDS.get(operation.path)
    if route_field is None:
        return
    kind = "summarize" if operation.path == "/v1/summarize" else "chat"
    known = [name for name, spec in ROUTES["routes"].items() if spec["kind"] == kind]
    body[route_field] = draw(st.sampled_from([*known, body.get(route_field)]))
    if body[route_field] is None:
        del body[route_field]
    if draw(st.booleans()):
        fuzz.answerable += 1
        _answerable(body, body.get(route_field, "chat"), draw, stream=fuzz.answerable % 2 == 0)


def _answerable(
    body: dict[str, Any], route: str, draw: Callable[[Any], Any], *, stream: bool
) -> None:
    """Make a generated body one the route answers: a user question last, sampling within the
    server's limits, only the overrides the route allows."""
    if "messages" in body:
        kept = [
            m
            for m in body["messages"]
            if m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
        ]
        body["messages"] = [*kept, {"role": "user", "content": draw(QUESTIONS)}]
        # Generated bodies seldom set it: every other answer is streamed (alternating, not
        # drawn, so that each endpoint's few answerable cases always include both kinds).
        body["stream"] = stream
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        del body["max_tokens"]
    for name in ("max_tokens", "max_completion_tokens"):
        if (body.get(name) or 0) > MAX_TOKENS:
            body[name] = draw(st.integers(1, MAX_TOKENS))
    if (body.get("top_k") or 0) > MAX_TOP_K:
        body["top_k"] = draw(st.integers(1, MAX_TOP_K))
    if isinstance(body.get("stop"), list):
        body["stop"] = body["stop"][:8]
    for name in ("n", "tools", "response_format"):
        body.pop(name, None)
    if route != "chat":  # the one route that lets callers change these
        for name in ("mode", "top_k", "adapter"):
            body.pop(name, None)
    if route not in ("chat", "summarize"):
        body.pop("filters", None)
    if "adapter" in body:
        body["adapter"] = draw(st.sampled_from([None, "base", "tone"]))
    if route == "summarize" or "text" in body or "doc_ids" in body:
        given = [name for name in ("text", "doc_ids", "filters") if body.get(name)]
        keep = draw(st.sampled_from(given)) if given else None
        for name in ("text", "doc_ids", "filters"):
            if name != keep:
                body.pop(name, None)
        if keep is None:
            body["text"] = draw(QUESTIONS)


def fuzz_operation(
    fuzz: Fuzz,
    operation: Operation,
    mode: GenerationMode,
    examples: int,
    authorization: str | None,
    *,
    expect: int | None = None,
    credentials: str | None = None,
    mutate: Callable[[Any], Any] | None = None,
    code: str | None = None,
) -> None:
    """Up to `examples` generated requests to `operation` with `authorization` (None: no
    header) and the body changed by `mutate`, each checked against the schema (and for
    status `expect`); a failure is recorded, not raised, so that one run reports every
    failing operation."""
    label = f"{operation.label} [{mode.value}, {credentials or _describe(authorization)}]"
    examples = examples if has_inputs(operation) else 1  # nothing to vary

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        # No shrinking: a failure is reported as found (schemathesis prints its curl), so a
        # failing run stays as short as a passing one.
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
    )
    @given(data=st.data())
    def probe(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode))
        if mode is GenerationMode.POSITIVE and expect is None:
            _steer(fuzz, operation, data.draw, case)
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if authorization is not None:
            headers["Authorization"] = authorization
        case.headers = CaseInsensitiveDict(headers)
        fuzz.sent[label] += 1
        fuzz.distinct[label].add(_fingerprint(case))
        try:
            # A mutated body is sent as is: schemathesis would re-check it against the schema.
            sent: dict[str, Any] = {} if mutate is None else {"data": json.dumps(mutate(case.body))}
            response = case.call(session=fuzz.client, timeout=TIMEOUT_S, **sent)
        except Exception as exc:
            # The in-process transport re-raises what the app let through: a 500 on a wire.
            raise AssertionError(f"the app raised {exc!r} on {case.as_curl_command()}") from exc
        streamed = any("event-stream" in v for v in response.headers.get("content-type", []))
        fuzz.statuses[f"{operation.label} {response.status_code}{' (stream)' * streamed}"] += 1
        case.validate_response(response, checks=CHECKS)
        if expect is not None:
            assert response.status_code == expect, f"{response.status_code} {response.text[:300]}"
        if code is not None:
            assert response.json()["error"]["code"] == code, response.text[:300]

    started = time.monotonic()
    try:
        probe()
    # Schemathesis raises a group of failures (an ExceptionGroup); each run's are kept.
    except (Exception, BaseExceptionGroup) as exc:
        fuzz.failures.append(f"{label}: {type(exc).__name__}: {_explain(exc)}")
    fuzz.seconds[label] += time.monotonic() - started


def _fingerprint(case: Any) -> str:
    """What tells two requests apart (the Authorization header is the test's, not drawn)."""
    request = (case.method, case.formatted_path, case.query, case.headers, case.body)
    return hashlib.sha256(repr(request).encode()).hexdigest()


def has_inputs(operation: Operation) -> bool:
    """Whether the operation takes a body or parameters, which negative cases break (the
    Authorization header is the test's to set)."""
    parameters = [p for p in operation.iter_parameters() if p.name.lower() != "authorization"]
    return bool(parameters) or bool(operation.definition.raw.get("requestBody"))


def _explain(exc: BaseException) -> str:
    """The failure's message, or its parts' (a group's own message only counts them)."""
    if isinstance(exc, BaseExceptionGroup):
        return f"{exc}\n" + "\n".join(_explain(part) for part in exc.exceptions)
    return str(exc)


def _describe(authorization: str | None) -> str:
    names = {f"Bearer {ADMIN_TOKEN}": "admin token", f"Bearer {API_KEY}": "API key"}
    return "no token" if authorization is None else names.get(authorization, "wrong token")


def finish(fuzz: Fuzz, started: float, minimum: int) -> None:
    """Print the run's figures; fail on any failure, or on fewer requests than `minimum`."""
    elapsed = time.monotonic() - started
    total = sum(len(fingerprints) for fingerprints in fuzz.distinct.values())
    report = "\n".join(
        f"{len(fuzz.distinct[label]):5d} distinct of {n:4d} in {fuzz.seconds[label]:5.1f} s {label}"
        for label, n in sorted(fuzz.sent.items())
    )
    statuses = "\n".join(f"{n:5d} {key}" for key, n in sorted(fuzz.statuses.items()))
    print(f"\n{total} distinct requests in {elapsed:.0f} s\n{report}\n{statuses}")
    assert not fuzz.failures, "\n\n".join(fuzz.failures)
    assert total >= minimum, report


def takes_json(operation: Operation) -> bool:
    body = operation.definition.raw.get("requestBody", {})
    return "application/json" in body.get("content", {})


def lone_surrogates(value: Any, top: bool = True) -> Any:
    """`value` with a lone surrogate appended to every string in it, and one more field (a
    body may have no string)."""
    if top and isinstance(value, dict):
        return {**lone_surrogates(value, top=False), "\udc00": "\udfff"}
    if isinstance(value, str):
        return value + "\ud800"
    if isinstance(value, list):
        return [lone_surrogates(item, top=False) for item in value]
    if isinstance(value, dict):
        return {
            lone_surrogates(k, top=False): lone_surrogates(v, top=False) for k, v in value.items()
        }
    return value
