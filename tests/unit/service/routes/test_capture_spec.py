"""A route's `capture`: sample and redact patterns checked when the routes file loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.errors import InvalidInput
from service.routes.loader import load_routes

ROUTE = """
routes:
  ask:
    kind: chat
    retrieval: {collection: docs}
    prompt: {system: "Sources: {context}", user: "{question}"}
    capture: CAPTURE
"""


def load(tmp_path: Path, capture: str, route: str = ROUTE) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(route.replace("CAPTURE", capture))
    return path


def test_capture_defaults_to_every_answer_unredacted(tmp_path: Path) -> None:
    spec = load_routes(load(tmp_path, "{}"))["ask"].capture
    assert spec is not None
    assert (spec.sample, spec.redact, spec.patterns) == (1.0, [], ())


def test_patterns_are_compiled_once_at_load(tmp_path: Path) -> None:
    spec = load_routes(load(tmp_path, r"{sample: 0.1, redact: ['\d{3}-\d{4}', '(?i)secret']}"))
    capture = spec["ask"].capture
    assert capture is not None
    assert capture.sample == 0.1
    assert [p.pattern for p in capture.patterns] == [r"\d{3}-\d{4}", "(?i)secret"]
    assert capture.patterns is capture.patterns


def test_a_route_without_capture_has_none(tmp_path: Path) -> None:
    assert load_routes(load(tmp_path, "null"))["ask"].capture is None


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        ("{redact: ['ok', '(unclosed']}", r"field 'capture.redact'.*redact\[1\] '\(unclosed'"),
        ("{sample: 1.5}", "field 'capture.sample'"),
        ("{sample: -0.1}", "field 'capture.sample'"),
        ("{rate: 0.5}", "field 'capture.rate'"),
        ("{redact: 'not-a-list'}", "field 'capture.redact'"),
    ],
    ids=["bad-regex", "sample-above-1", "sample-below-0", "unknown-field", "not-a-list"],
)
def test_a_bad_capture_names_route_and_field(tmp_path: Path, capture: str, expected: str) -> None:
    with pytest.raises(InvalidInput, match=rf"route 'ask', {expected}"):
        load_routes(load(tmp_path, capture))


def test_capture_is_refused_on_summarize_routes(tmp_path: Path) -> None:
    summarize = """
routes:
  sum:
    kind: summarize
    prompt: {user: "{text}"}
    capture: CAPTURE
"""
    with pytest.raises(InvalidInput, match=r"route 'sum'.*'capture' is for chat routes only"):
        load_routes(load(tmp_path, "{}", summarize))
