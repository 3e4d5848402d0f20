"""A JSON route's answer: parsed, or the reason it is not the route's JSON."""

from __future__ import annotations

from service.routes.output import parse_output
from service.routes.schemas import OutputSpec

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
JSON = OutputSpec.model_validate({"type": "json", "schema": SCHEMA})


def test_text_routes_have_no_output() -> None:
    output = parse_output(OutputSpec(), "{not json", "stop")
    assert (output.value, output.error, output.reason) == (None, None, None)


def test_valid_json_is_the_output() -> None:
    output = parse_output(JSON, '{"n": 3}', "stop")
    assert (output.value, output.error, output.reason) == ({"n": 3}, None, None)


def test_an_answer_cut_off_by_max_tokens_says_so() -> None:
    output = parse_output(JSON, '{"n": 3', "length")
    assert output.value is None
    assert output.reason == "cut_off"
    assert output.error is not None
    assert "max_tokens" in output.error


def test_json_that_breaks_the_schema_names_the_field() -> None:
    output = parse_output(JSON, '{"n": "three"}', "stop")
    assert output.value is None
    assert output.reason == "schema"
    assert output.error == (
        "the answer's JSON does not match the route's schema: n: 'three' is not of type 'integer'"
    )
