"""The API fuzzed from its own OpenAPI schema (schemathesis): every operation, admin included,
with its credentials, without them and with wrong ones. No answer may be a 5xx, and every one
must be what the schema says (a documented status, its content type, its body and headers).

In process, through schemathesis's ASGI transport: the app is the real one (tiny model, real
LoRA adapters, the real embedder, embedded Qdrant with the test corpus), and thousands of
requests cost no sockets, ports or server subprocess; uvicorn's HTTP parsing is not ragtune's.
Reproducible: Hypothesis is derandomized (the same cases every run) with no example database.
Counted are distinct requests: Hypothesis draws some cases more than once.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.python.asgi import ASGIClient, get_client, shutdown_lifespans

from service.app import create_app
from tests.conftest import TinyModel
from tests.fixtures.api import ADMIN_TOKEN, api_settings, ingest_corpus
from tests.integration.service.fuzzing import (
    API_KEY,
    CHECKS,
    MAX_TOKENS,
    ROUTES,
    TIMEOUT_S,
    Fuzz,
    finish,
    fuzz_operation,
    has_inputs,
    lone_surrogates,
    takes_json,
    token_for,
)

# Examples per operation and generation mode, with the credentials: Hypothesis stops sooner on
# an operation whose inputs it has exhausted (GET /healthz has one).
POSITIVE = 80
NEGATIVE = 50
# Per operation and kind of wrong credentials (none, a wrong token, the other API's token,
# another scheme).
UNAUTHORIZED = 4
MINIMUM_REQUESTS = 1_000
# Successes the authorized run must reach (its steering is what makes them likely).
ANSWERED = [
    "POST /v1/chat 200",
    "POST /v1/chat 200 (stream)",
    "POST /v1/chat/completions 200",
    "POST /v1/chat/completions 200 (stream)",
    "POST /v1/summarize 200",
    "POST /v1/feedback 200",
    "POST /admin/adapters 201",
    "POST /admin/adapters/upload 201",
    "POST /admin/adapters/{ref}/load 204",
    "PUT /admin/aliases/{alias} 200",
]


@pytest.fixture(scope="module")
def fuzz(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    home = tmp_path_factory.mktemp("fuzz")
    routes = home / "routes.json"  # YAML is a superset of JSON
    routes.write_text(json.dumps(ROUTES))
    settings = api_settings(
        home,
        tiny_model.path,
        api={"routes_file": routes, "keys": [API_KEY], "max_tokens": MAX_TOKENS},
        admin={"max_upload_bytes": 400_000},
    )
    ingest_corpus(settings)
    root = settings.adapters_root()
    for name in ("alpha", "beta", "too-big"):
        shutil.copytree(tiny_model.adapters[name], root / "incoming" / name)
    archive = Path(shutil.make_archive(str(home / "alpha"), "zip", tiny_model.adapters["alpha"]))
    app = create_app(settings)
    try:
        # Runs the lifespan, which lasts until shutdown_lifespans.
        with get_client(cast(Any, app)) as client:
            refs = _register(client, root)
            schema = schemathesis.openapi.from_asgi(
                "/openapi.json", app, config=schemathesis.Config()
            )
            yield Fuzz(schema, client, refs, ["tone", "spare"], archive.read_bytes())
    finally:
        shutdown_lifespans()


def _register(client: ASGIClient, root: Path) -> list[str]:
    """Real adapters in the registry before fuzzing: `tone` (the tone route's) on alpha."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    refs = []
    for name, alias in (("alpha", "tone"), ("beta", "spare")):
        response = client.post(
            "/admin/adapters",
            json={"path": f"incoming/{name}", "name": name, "alias": alias},
            headers=headers,
        )
        assert response.status_code == 201, response.text
        adapter = response.json()["adapter"]
        refs.append(f"{adapter['name']}@{adapter['version']}")
    return [*refs, "alpha@0000000000000000"]  # and one that does not exist


def test_every_operation_with_credentials(fuzz: Fuzz) -> None:
    """Positive and negative cases on every operation, authorized: no 5xx, all as documented."""
    fuzz.reset()
    started = time.monotonic()
    operations = fuzz.operations()
    for operation in operations:
        token = token_for(operation)
        authorization = f"Bearer {token}" if token else None
        fuzz_operation(fuzz, operation, GenerationMode.POSITIVE, POSITIVE, authorization)
        if has_inputs(operation):
            fuzz_operation(fuzz, operation, GenerationMode.NEGATIVE, NEGATIVE, authorization)
    finish(fuzz, started, MINIMUM_REQUESTS)
    assert {op.label for op in operations} == {label.split(" [")[0] for label in fuzz.sent}
    # Answers were checked too, streamed or not, and the registry changed: not only refusals.
    answered = [label for label in ANSWERED if not fuzz.statuses[label]]
    assert not answered, f"never answered: {answered}"


def test_every_operation_without_credentials(fuzz: Fuzz) -> None:
    """No token, a wrong one, or the other API's: 401 (403 for a wrong admin token), before
    the body is even read, and as documented."""
    fuzz.reset()
    started = time.monotonic()
    protected = [op for op in fuzz.operations() if token_for(op) is not None]
    for operation in protected:
        admin = operation.path.startswith("/admin")
        other = API_KEY if admin else ADMIN_TOKEN
        for credentials, authorization, status in (
            ("no token", None, 401),
            ("wrong token", "Bearer not-a-token-of-this-server", 403 if admin else 401),
            ("the other API's token", f"Bearer {other}", 403 if admin else 401),
            ("not a bearer", f"Basic {API_KEY}", 401),
        ):
            fuzz_operation(
                fuzz,
                operation,
                GenerationMode.POSITIVE,
                UNAUTHORIZED,
                authorization,
                expect=status,
                credentials=credentials,
            )
    finish(fuzz, started, 4 * len(protected))
    assert len(fuzz.sent) == 4 * len(protected)


def test_lone_surrogates_are_refused(fuzz: Fuzz) -> None:
    """A JSON string escaping half a UTF-16 pair (hypothesis never draws one) decodes to a str
    no encoder takes: the tokenizer, Qdrant and the audit log failed on it with a 500. Every
    JSON body refuses it with a 422, whichever string holds it."""
    fuzz.reset()
    started = time.monotonic()
    operations = [op for op in fuzz.operations() if takes_json(op)]
    for operation in operations:
        token = token_for(operation)
        fuzz_operation(
            fuzz,
            operation,
            GenerationMode.POSITIVE,
            UNAUTHORIZED,
            f"Bearer {token}",
            expect=422,
            credentials="lone surrogates",
            mutate=lone_surrogates,
            code="invalid_unicode",
        )
    finish(fuzz, started, len(operations))
    assert len(fuzz.sent) == len(operations) == 6


# What fuzzing found (each a 500, or a status the schema did not list), replayed every run:
# the generated cases that found them change whenever the schema does.
# (operation, body (bytes: sent as is), status now)
FOUND = [
    # Not UTF-8: FastAPI's undocumented 400 "There was an error parsing the body".
    pytest.param("POST /v1/chat", b'{"messages": "\xe9"}', 422, id="not-utf-8"),
    # Below float32's smallest: the logits divided by 0 gave NaN probabilities.
    pytest.param(
        "POST /v1/summarize",
        {"text": "Tides come twice a day.", "temperature": 1e-300},
        200,
        id="temperature-1e-300",
    ),
    # Outside Qdrant's JSON path grammar: ValueError from the embedded store.
    pytest.param(
        "POST /v1/summarize",
        {"filters": {"\x89\x9e\x9b\x0c": -47732}},
        422,
        id="filter-field-control-characters",
    ),
    pytest.param(
        "POST /v1/chat",
        {"messages": [{"role": "user", "content": "hi"}], "filters": {"a b": 1}},
        422,
        id="filter-field-with-a-space",
    ),
    # Outside Qdrant's 64-bit integers: TypeError from the embedded store.
    pytest.param(
        "POST /v1/chat",
        {"messages": [{"role": "user", "content": "hi"}], "filters": {"n": 2**64}},
        422,
        id="filter-value-past-int64",
    ),
    # A name ending in a newline passed the registry's `^...$` check (re.match).
    pytest.param(
        "POST /admin/adapters",
        {"path": "incoming/alpha", "name": "tone\n"},
        422,
        id="name-ending-in-newline",
    ),
]


@pytest.mark.parametrize(("label", "body", "status"), FOUND)
def test_what_fuzzing_found(fuzz: Fuzz, label: str, body: Any, status: int) -> None:
    """Each once failed; now answered as the schema says, with `status`."""
    operation = next(op for op in fuzz.operations() if op.label == label)
    headers = {"Authorization": f"Bearer {token_for(operation)}"}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        case = operation.Case(headers=headers, media_type="application/json")
        response = case.call(session=fuzz.client, data=body, timeout=TIMEOUT_S)
    else:
        case = operation.Case(headers=headers, body=body, media_type="application/json")
        response = case.call(session=fuzz.client, timeout=TIMEOUT_S)
    case.validate_response(response, checks=CHECKS)
    assert response.status_code == status, response.text
