"""A JSON route's answer, parsed and checked against the route's schema. An answer that is
not what the schema promises is reported to the caller (`output_error`), never hidden."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from engine.types import FinishReason
from service.routes.schemas import OutputSpec

# Why an answer is not the route's JSON: cut off by max_tokens, not JSON, or not the schema's.
InvalidReason = Literal["cut_off", "not_json", "schema"]


@dataclass(frozen=True)
class Output:
    """The parsed answer (None for text routes or an invalid answer) and, when invalid, why."""

    value: Any = None
    error: str | None = None
    reason: InvalidReason | None = None


def parse_output(spec: OutputSpec, text: str, finish_reason: FinishReason) -> Output:
    """`text` as the route's output: nothing for text routes, else JSON valid for its schema."""
    if spec.type != "json":
        return Output()
    try:
        value = json.loads(text)
    except ValueError as exc:
        if finish_reason == "length":
            return Output(
                error=f"the answer was cut off by max_tokens before its JSON was complete "
                f"({exc}); ask for more max_tokens",
                reason="cut_off",
            )
        return Output(error=f"the answer is not valid JSON: {exc}", reason="not_json")
    if spec.json_schema is not None:
        problem = jsonschema.exceptions.best_match(
            jsonschema.validators.validator_for(spec.json_schema)(spec.json_schema).iter_errors(
                value
            )
        )
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path) or "the answer"
            return Output(
                error=f"the answer's JSON does not match the route's schema: {where}: "
                f"{problem.message}",
                reason="schema",
            )
    return Output(value=value)
