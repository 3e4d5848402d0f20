"""The routes file: a bad one is refused at load with the route and field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.errors import InvalidInput, NotFound
from service.routes.loader import DEFAULT_ROUTES, load_routes

GOOD = """
routes:
  ask:
    kind: chat
    retrieval: {collection: docs, top_k: 3}
    prompt: {system: "Sources: {context}", user: "{question}"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return path


def test_the_shipped_routes_load() -> None:
    routes = load_routes(DEFAULT_ROUTES)
    assert {"chat", "chat-plain", "summarize"} <= set(routes)
    assert routes["summarize"].summarize is not None
    assert routes["summarize"].prompt.reduce is not None


def test_a_minimal_route_gets_defaults(tmp_path: Path) -> None:
    route = load_routes(write(tmp_path, GOOD))["ask"]
    assert route.retrieval is not None
    assert route.retrieval.mode == "hybrid"
    assert route.adapter is None
    assert route.output.type == "text"
    assert route.overrides.adapters == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routes: {}", "field 'routes'"),
        ("routes:\n  ask: {kind: chat}", "route 'ask', field 'prompt'"),
        (GOOD.replace("top_k: 3", "top_k: 0"), "route 'ask', field 'retrieval.top_k'"),
        (GOOD.replace("top_k: 3", "top_k: 3, colour: red"), "field 'retrieval.colour'"),
        (GOOD.replace("{question}", "{questoin}"), "prompt.user uses {questoin}"),
        (GOOD.replace("Sources: {context}", "No context"), "uses {context}"),
        (GOOD.replace("kind: chat", "kind: poem"), "field 'kind'"),
        (GOOD + "    output: {type: json}\n", "needs a 'schema'"),
        (GOOD + "    overrides: {generation: [colour]}\n", "overrides.generation"),
        (GOOD + "    summarize: {piece_tokens: 100}\n", "for summarize routes only"),
        (GOOD.replace("{question}", "{question} {"), "not a valid template"),
        (GOOD.replace("ask:", "'bad name':"), "route name 'bad name'"),
        ("routes: [1, 2]", "field 'routes'"),
        ("- just a list", "must be a mapping"),
        ("routes: {ask: [", "not valid YAML"),
    ],
)
def test_bad_routes_files_name_the_route_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(InvalidInput, match=r"is invalid|not valid YAML|must be a mapping") as info:
        load_routes(write(tmp_path, text))
    assert expected in str(info.value)


def test_missing_routes_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="RAGTUNE_API__ROUTES_FILE"):
        load_routes(tmp_path / "nope.yaml")


def test_json_output_route(tmp_path: Path) -> None:
    text = GOOD + "    output:\n      type: json\n      schema: {type: object}\n"
    assert load_routes(write(tmp_path, text))["ask"].output.json_schema == {"type": "object"}


def test_serve_stops_on_a_bad_routes_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import main

    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path))
    bad = write(tmp_path, GOOD.replace("top_k: 3", "top_k: -1"))
    assert main(["serve", "--routes", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "route 'ask', field 'retrieval.top_k'" in err
    assert "Traceback" not in err


def test_a_route_past_a_setting_is_refused_when_the_app_is_built(tmp_path: Path) -> None:
    from ragtune.settings import Settings
    from service.app import create_app

    routes = write(tmp_path, GOOD + "    generation: {max_tokens: 2000}\n")
    settings = Settings(data_dir=tmp_path, api={"routes_file": routes, "max_tokens": 1024})
    with pytest.raises(InvalidInput) as info:
        create_app(settings)
    message = str(info.value)
    assert "route 'ask', field 'generation.max_tokens': 2000 is above api.max_tokens (1024)" in (
        message
    )
    assert "RAGTUNE_API__MAX_TOKENS" in message
    assert "\n" not in message
    # Within the setting, the same file is served.
    create_app(
        settings.model_copy(update={"api": settings.api.model_copy(update={"max_tokens": 2000})})
    )


def test_the_shipped_routes_fit_the_default_settings() -> None:
    from ragtune.settings import Settings
    from service.routes.loader import check_against_settings

    check_against_settings(load_routes(DEFAULT_ROUTES), Settings(), DEFAULT_ROUTES)


def test_serve_stops_on_a_route_past_a_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import main

    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAGTUNE_API__MAX_TOKENS", "512")
    routes = write(tmp_path, GOOD + "    generation: {max_tokens: 600}\n")
    assert main(["serve", "--routes", str(routes)]) == 2
    err = capsys.readouterr().err
    assert "route 'ask', field 'generation.max_tokens': 600 is above api.max_tokens (512)" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
