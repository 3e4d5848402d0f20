"""API keys (api.keys) on the user endpoints: asked for before the body is read, 401 in OpenAI's
error shape when missing or wrong, either of two keys accepted (rotation), probes left open,
and kept apart from the admin token in both directions. On a scripted backend, so it is fast;
the official `openai` client runs against a real server on a socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import SecretStr, ValidationError

from bench.local_server import serve_in_thread
from ragtune.settings import Settings
from service.app import create_app
from service.auth import MISSING_KEY, WRONG_KEY, accepts
from service.cli import banner
from tests.conftest import TinyModel
from tests.fixtures.api import ADMIN_TOKEN, admin_headers, api_settings, ingest_corpus, running_app
from tests.fixtures.scripted_backend import ScriptedBackend

KEYS = ("rt-key-one-3f9a8c1d2e", "rt-key-two-7b6e5d4c3a")
ANSWER = "Apples grow in orchards [1]."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "How do apples grow?"}]
# (method, path, keyword arguments): a valid request apart from the credentials.
ENDPOINTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/chat", {"json": {"route": "chat", "messages": MESSAGES, "top_k": 2}}),
    ("POST", "/v1/chat", {"json": {"route": "chat", "messages": MESSAGES, "stream": True}}),
    ("POST", "/v1/summarize", {"json": {"text": "Apples grow on trees in orchards."}}),
    ("POST", "/v1/chat/completions", {"json": {"model": "chat", "messages": MESSAGES}}),
    ("GET", "/v1/models", {}),
    ("POST", "/v1/feedback", {"json": {"id": "chatcmpl-" + "c" * 32, "rating": 1}}),
]
IDS = ["chat", "chat-stream", "summarize", "chat-completions", "models", "feedback"]
UNAUTHENTICATED = {
    "error": {"message": MISSING_KEY, "type": "authentication_error", "param": None, "code": None}
}
WRONG = {
    "error": {
        "message": WRONG_KEY,
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend(ANSWER)


def keyed_settings(root: Path, model: Path) -> Settings:
    settings = api_settings(root, model, api={"keys": list(KEYS)})
    ingest_corpus(settings)
    return settings


@pytest.fixture(scope="module")
def client(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory, backend: ScriptedBackend
) -> Iterator[TestClient]:
    settings = keyed_settings(tmp_path_factory.mktemp("auth"), tiny_model.path)
    with running_app(settings, lambda _: [backend]) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("method", "path", "kwargs"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", KEYS[0], f"Token {KEYS[0]}"],
    ids=["none", "basic", "bearer-no-key", "bearer-space", "key-no-scheme", "token-scheme"],
)
def test_missing_key_is_401_with_a_bearer_challenge(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, headers=headers, **kwargs)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == UNAUTHENTICATED


@pytest.mark.parametrize(("method", "path", "kwargs"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize(
    "key",
    [
        "wrong",
        KEYS[0][:-1],
        KEYS[0] + "x",
        KEYS[0].upper(),
        f"{KEYS[0]},{KEYS[1]}",
        f"{KEYS[0]} {KEYS[1]}",
        ADMIN_TOKEN,  # the admin token is not an API key
    ],
    ids=["wrong", "prefix", "longer", "upper", "both-comma", "both-space", "admin-token"],
)
def test_wrong_key_is_401_and_never_echoed(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], key: str
) -> None:
    response = client.request(method, path, headers=bearer(key), **kwargs)
    # OpenAI answers a wrong key with 401, not 403.
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert response.json() == WRONG
    assert key not in response.text


@pytest.mark.parametrize(("method", "path", "kwargs"), ENDPOINTS, ids=IDS)
@pytest.mark.parametrize("key", KEYS, ids=["first-key", "second-key"])
def test_either_key_opens_every_endpoint(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], key: str
) -> None:
    response = client.request(method, path, headers=bearer(key), **kwargs)
    assert response.status_code == 200, response.text
    if kwargs.get("json", {}).get("stream"):
        assert response.text.rstrip().endswith("data: [DONE]")
        assert '"type":"delta"' in response.text.replace(" ", "")
    elif path == "/v1/models":
        assert "chat" in {m["id"] for m in response.json()["data"]}
    elif path == "/v1/chat":
        assert response.json()["answer"] == ANSWER
    elif path == "/v1/summarize":
        assert response.json()["summary"] == ANSWER
    elif path == "/v1/feedback":
        assert response.json()["recorded"] is True
    else:
        assert response.json()["choices"][0]["message"]["content"] == ANSWER


def test_scheme_is_case_insensitive_and_spacing_tolerated(client: TestClient) -> None:
    for authorization in (f"bearer {KEYS[0]}", f"BEARER {KEYS[1]}", f"Bearer  {KEYS[0]}"):
        response = client.get("/v1/models", headers={"Authorization": authorization})
        assert response.status_code == 200, (authorization, response.text)


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/v1/chat", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
        ("/v1/chat", {"json": {"route": "chat"}}),
        ("/v1/summarize", {"json": {"text": "a", "doc_ids": ["b"]}}),
        ("/v1/chat/completions", {"json": {"messages": "not a list"}}),
    ],
    ids=["not-json", "no-messages", "summarize-two-inputs", "completions-no-model"],
)
def test_invalid_body_without_a_key_is_401_not_422(
    client: TestClient, path: str, kwargs: dict[str, Any]
) -> None:
    def send(credentials: dict[str, str]) -> Any:
        return client.post(
            path, **{**kwargs, "headers": {**kwargs.get("headers", {}), **credentials}}
        )

    # Authentication comes before anything about the body is revealed...
    for credentials, body in (({}, UNAUTHENTICATED), (bearer("no"), WRONG)):
        response = send(credentials)
        assert response.status_code == 401, response.text
        assert response.json() == body
    # ...and the body is indeed invalid: with a key, it is 422.
    response = send(bearer(KEYS[1]))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_refused_requests_reach_no_backend(client: TestClient, backend: ScriptedBackend) -> None:
    before = len(backend.requests)
    for method, path, kwargs in ENDPOINTS:
        assert client.request(method, path, **kwargs).status_code == 401
        assert client.request(method, path, headers=bearer("no"), **kwargs).status_code == 401
    assert len(backend.requests) == before


def test_probes_and_metrics_stay_open(client: TestClient) -> None:
    client.get("/v1/models")  # one refusal, to be counted
    for path in ("/healthz", "/readyz", "/metrics"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
    metrics = client.get("/metrics").text
    assert 'ragtune_errors_total{type="authentication_error"}' in metrics


def test_api_key_does_not_open_admin_and_admin_token_still_does(client: TestClient) -> None:
    for key in KEYS:
        response = client.get("/admin/status", headers=bearer(key))
        # The admin API keeps its own rules: a token that is not the admin token is 403.
        assert response.status_code == 403, response.text
        assert response.json()["error"]["type"] == "permission_error"
    assert client.get("/admin/status", headers=admin_headers()).status_code == 200
    # And the admin token does not open the user endpoints.
    response = client.get("/v1/models", headers=admin_headers())
    assert response.status_code == 401
    assert response.json() == WRONG


def test_no_keys_means_open(tiny_model: TinyModel, tmp_path: Path) -> None:
    settings = api_settings(tmp_path, tiny_model.path)
    assert settings.api.keys == []
    # GET /v1/models needs no Qdrant collection; the lifespan is run so state exists.
    with running_app(settings, lambda _: [ScriptedBackend()]) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/models", headers=bearer("anything")).status_code == 200
        schema = client.get("/openapi.json").json()
    # The admin API (its token is set here) documents its own scheme, adminToken.
    assert "apiKey" not in schema.get("components", {}).get("securitySchemes", {})
    assert "security" not in schema["paths"]["/v1/chat"]["post"]


def test_the_openapi_schema_declares_the_key_on_the_user_endpoints(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    paths = schema["paths"]
    for path, method in [
        ("/v1/chat", "post"),
        ("/v1/summarize", "post"),
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/v1/feedback", "post"),
    ]:
        assert paths[path][method]["security"] == [{"apiKey": []}], path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in paths[path]["get"], path
    assert client.get("/docs").status_code == 200


def test_accepts_compares_with_every_key() -> None:
    keys = [SecretStr(k) for k in KEYS]
    assert accepts(keys, KEYS[0])
    assert accepts(keys, KEYS[1])
    assert not accepts(keys, "")
    assert not accepts([], KEYS[0])
    assert not accepts(keys, KEYS[0] + KEYS[1])


# --- settings -----------------------------------------------------------------------------


def test_keys_come_from_the_env_var_as_a_json_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAGTUNE_API__KEYS", json.dumps(list(KEYS)))
    monkeypatch.setenv("RAGTUNE_API__PORT", "8123")  # the other api.* fields still apply
    settings = Settings(data_dir=tmp_path)
    assert [k.get_secret_value() for k in settings.api.keys] == list(KEYS)
    assert settings.api.port == 8123
    assert KEYS[0] not in repr(settings)
    monkeypatch.setenv("RAGTUNE_API__KEYS", "[]")
    assert Settings(data_dir=tmp_path).api.keys == []


def test_env_var_that_is_not_a_json_list_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAGTUNE_API__KEYS", KEYS[0])
    with pytest.raises(ValidationError, match=r"api\.keys must be a JSON list") as caught:
        Settings(data_dir=tmp_path)
    assert KEYS[0] not in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([""], r"api\.keys\[0\] is empty"),
        ([KEYS[0], "   "], r"api\.keys\[1\] is empty"),
        (["short-key-15chr"], r"api\.keys\[0\] is shorter than 16 characters"),
        ([KEYS[0], "has a space in it, long"], r"api\.keys\[1\] has spaces"),
        (["ключ-ключ-ключ-ключ"], r"api\.keys\[0\] has spaces or characters that are not"),
    ],
    ids=["empty", "blank", "too-short", "space", "not-ascii"],
)
def test_bad_keys_are_refused_at_load_naming_the_setting(
    tmp_path: Path, keys: list[str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        Settings(data_dir=tmp_path, api={"keys": keys})
    for key in keys:
        if key.strip():
            assert key not in str(caught.value)


def test_sixteen_characters_is_enough(tmp_path: Path) -> None:
    assert len(Settings(data_dir=tmp_path, api={"keys": ["k" * 16]}).api.keys) == 1


def test_admin_token_may_not_be_an_api_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"admin\.token is also one of api\.keys") as caught:
        Settings(
            data_dir=tmp_path, admin={"token": ADMIN_TOKEN}, api={"keys": [KEYS[0], ADMIN_TOKEN]}
        )
    assert ADMIN_TOKEN not in str(caught.value)
    assert KEYS[0] not in str(caught.value)


# --- the serve banner ---------------------------------------------------------------------


def test_banner_shows_a_key_placeholder_when_keys_are_set(tmp_path: Path) -> None:
    keyed = banner(Settings(data_dir=tmp_path, api={"keys": list(KEYS)}))
    assert '-H "Authorization: Bearer $RAGTUNE_API_KEY"' in keyed
    assert 'api_key=os.environ["RAGTUNE_API_KEY"]' in keyed
    assert "import os" in keyed
    assert "keys are not printed" in keyed
    assert not any(key in keyed for key in KEYS)
    open_ = banner(Settings(data_dir=tmp_path))
    assert "Authorization" not in open_
    assert 'api_key="unused"' in open_
    assert "warning" not in open_  # 127.0.0.1 by default


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "ragtune.internal"])
def test_banner_warns_when_listening_beyond_loopback_without_keys(
    tmp_path: Path, host: str
) -> None:
    text = banner(Settings(data_dir=tmp_path, api={"host": host}))
    assert f"warning: listening on {host} with no API keys" in text
    assert "RAGTUNE_API__KEYS" in text
    keyed = banner(Settings(data_dir=tmp_path, api={"host": host, "keys": list(KEYS)}))
    assert "warning" not in keyed
    for loopback in ("localhost", "127.0.0.1", "::1"):
        assert "warning" not in banner(Settings(data_dir=tmp_path, api={"host": loopback}))


# --- the official openai client, over a socket ----------------------------------------------


@pytest.fixture(scope="module")
def server_url(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory, backend: ScriptedBackend
) -> Iterator[str]:
    # Its own data dir: the embedded Qdrant folder can be opened by one app at a time.
    settings = keyed_settings(tmp_path_factory.mktemp("auth-socket"), tiny_model.path)
    with serve_in_thread(create_app(settings, lambda _: [backend])) as url:
        yield url


@pytest.mark.parametrize("key", KEYS, ids=["first-key", "second-key"])
def test_openai_client_with_a_right_key_works(server_url: str, key: str) -> None:
    with OpenAI(base_url=f"{server_url}/v1", api_key=key, max_retries=0) as client:
        assert "chat" in {model.id for model in client.models.list()}
        response = client.chat.completions.create(model="chat", messages=MESSAGES)
        assert response.choices[0].message.content == ANSWER
        stream = client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER


@pytest.mark.parametrize("key", ["wrong-key-0123456789", ADMIN_TOKEN], ids=["wrong", "admin-token"])
def test_openai_client_with_a_wrong_key_gets_authentication_error(
    server_url: str, key: str
) -> None:
    with OpenAI(base_url=f"{server_url}/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="chat", messages=MESSAGES)
        assert caught.value.status_code == 401
        assert caught.value.body == WRONG["error"]
        assert key not in str(caught.value)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
