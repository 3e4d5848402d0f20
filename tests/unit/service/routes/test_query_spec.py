"""retrieval.query in the routes file: validated with the route and field named, and left out
of a route's identity (its fingerprint, evaluation cache keys) unless it changes something."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.errors import InvalidInput
from service.openai_api.service import route_info
from service.routes.loader import DEFAULT_ROUTES, load_routes
from service.routes.schemas import CONDENSE_PROMPT, RouteSpec

ROUTE = """
routes:
  ask:
    kind: chat
    retrieval: {collection: docs, top_k: 3QUERY}
    prompt: {system: "Sources: {context}", user: "{question}"}
"""
# RetrievalSpec's dump before retrieval.query existed: what route fingerprints were made of.
DUMPED_BEFORE = {
    "collection",
    "mode",
    "top_k",
    "score_threshold",
    "filters",
    "context_tokens",
    "per_document",
}


def route(tmp_path: Path, query: str = "") -> RouteSpec:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTE.replace("QUERY", f", query: {query}" if query else ""))
    return load_routes(path)["ask"]


def dumped_query(spec: RouteSpec) -> object:
    return spec.model_dump(mode="json", by_alias=True)["retrieval"].get("query")


def test_the_default_is_last_and_routes_without_it_keep_their_fingerprint(
    tmp_path: Path,
) -> None:
    plain = route(tmp_path)
    assert plain.retrieval is not None
    assert plain.retrieval.query.mode == "last"
    assert set(plain.model_dump(mode="json", by_alias=True)["retrieval"]) == DUMPED_BEFORE
    # Saying the default changes nothing either.
    for same in ("last", "{mode: last}"):
        assert route_info(route(tmp_path, same)).fingerprint == route_info(plain).fingerprint
    for name, spec in load_routes(DEFAULT_ROUTES).items():
        if spec.retrieval is not None:
            assert "query" not in spec.model_dump(mode="json")["retrieval"], name


def test_a_query_mode_changes_the_fingerprint(tmp_path: Path) -> None:
    prints = {
        route_info(route(tmp_path, query)).fingerprint
        for query in ("last", "window", "{mode: window, turns: 2}", "condense")
    }
    assert len(prints) == 4
    prompt = "'{history} then {question}'"
    assert (
        route_info(route(tmp_path, f"{{mode: condense, prompt: {prompt}}}")).fingerprint
        != route_info(route(tmp_path, "condense")).fingerprint
    )


def test_window_dumps_only_what_it_uses(tmp_path: Path) -> None:
    assert dumped_query(route(tmp_path, "{mode: window, turns: 2}")) == {
        "mode": "window",
        "turns": 2,
    }
    assert dumped_query(route(tmp_path, "condense")) == {
        "mode": "condense",
        "turns": 3,
        "prompt": CONDENSE_PROMPT,
        "max_tokens": 64,
    }


def test_a_mode_alone_is_short_for_the_mapping(tmp_path: Path) -> None:
    assert route(tmp_path, "window") == route(tmp_path, "{mode: window}")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("history", "field 'retrieval.query.mode': Input should be 'last', 'window' or"),
        ("{mode: window, turns: 0}", "field 'retrieval.query.turns': Input should be greater"),
        ("{mode: window, depth: 2}", "field 'retrieval.query.depth': Extra inputs"),
        ("{turns: 2}", "turns: mode 'last' searches with the last user message only"),
        ("{mode: window, max_tokens: 9}", "max_tokens: only used by mode 'condense'"),
        ("{mode: condense, turns: 1}", "turns: mode 'condense' needs at least 2"),
        ("{mode: condense, max_tokens: 0}", "field 'retrieval.query.max_tokens'"),
        ("{mode: condense, prompt: 'Rewrite {question}'}", "prompt must use {history}"),
        (
            "{mode: condense, prompt: '{history} {question} {context}'}",
            "prompt uses {context}, which is not one of {history}, {question}",
        ),
        ("{mode: condense, prompt: '{history} {question'}", "prompt is not a valid template"),
    ],
)
def test_a_bad_query_is_refused_naming_route_field_and_fix(
    tmp_path: Path, query: str, expected: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        route(tmp_path, query)
    assert "route 'ask', field 'retrieval.query" in str(raised.value)
    assert expected in str(raised.value)


def test_a_summarize_route_searches_nothing_so_it_takes_no_query(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n  sum:\n    kind: summarize\n"
        "    retrieval: {collection: docs, query: window}\n"
        "    prompt: {user: '{text}'}\n"
    )
    with pytest.raises(InvalidInput, match=r"route 'sum'.*retrieval\.query is for chat routes"):
        load_routes(path)
    path.write_text(path.read_text().replace(", query: window", ""))
    assert load_routes(path)["sum"].retrieval is not None
