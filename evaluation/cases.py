"""Reading a suite's cases (cases.jsonl) and few-shot sources; every error names FILE:LINE."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evaluation.assertions import check_spec
from evaluation.results import AssertionSpec
from ragtune.errors import InvalidInput

_CASE_KEYS = ("vars", "assert", "id")


class SuiteError(InvalidInput):
    """The suite (its YAML, its cases or few-shot files) is wrong; the message starts FILE:LINE."""


class Case(BaseModel):
    """One scored case: its id, where it was written, its vars and its own assertions."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    line: int
    vars: dict[str, Any]
    asserts: list[AssertionSpec] = Field(default_factory=list, alias="assert")


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSONL file with their 1-based line numbers (blank lines skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such file; check the path (relative to the suite)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: cannot be read as UTF-8 text: {exc}") from exc
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(
                f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno}); "
                "write one JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise SuiteError(
                f"{path}:{number}: a line must be a JSON object, not {type(obj).__name__}"
            )
        rows.append((number, obj))
    return rows


def read_cases(path: Path) -> list[Case]:
    """The cases of `path`: `{"vars": {...}, "assert": [...]?, "id": "..."?}` per line.

    The id defaults to the line number; duplicate ids and malformed lines are refused.
    """
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, obj in _rows(path):
        where = f"{path}:{number}"
        unknown = sorted(set(obj) - set(_CASE_KEYS))
        if unknown:
            raise SuiteError(
                f"{where}: unknown key {unknown[0]!r}; a case has {', '.join(_CASE_KEYS)}"
            )
        vars_ = obj.get("vars", {})
        if not isinstance(vars_, dict):
            raise SuiteError(f"{where}: 'vars' must be a JSON object of template variables")
        case_id = obj.get("id", str(number))
        if not isinstance(case_id, str | int) or isinstance(case_id, bool):
            raise SuiteError(f"{where}: 'id' must be a string")
        case_id = str(case_id)
        if case_id in seen:
            raise SuiteError(
                f"{where}: duplicate case id {case_id!r} (first on line {seen[case_id]})"
            )
        seen[case_id] = number
        raw_asserts = obj.get("assert", [])
        if not isinstance(raw_asserts, list):
            raise SuiteError(f"{where}: 'assert' must be a list of assertions")
        asserts: list[AssertionSpec] = []
        for index, raw in enumerate(raw_asserts):
            try:
                spec = AssertionSpec.model_validate(raw)
                check_spec(spec)
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "(the assertion)"
                raise SuiteError(
                    f"{where}: assert[{index}]: field {field!r}: {first['msg']}"
                ) from None
            except ValueError as exc:
                raise SuiteError(f"{where}: assert[{index}]: {exc}") from None
            asserts.append(spec)
        cases.append(Case(id=case_id, line=number, vars=vars_, asserts=asserts))
    if not cases:
        raise SuiteError(f"{path}: no cases; write one JSON object per line")
    return cases


class Example(BaseModel):
    """One few-shot row: its line, its fields (the template's vars) and its input and answer."""

    line: int
    vars: dict[str, Any]
    input: str
    output: str
    prompt: str = ""  # the user turn: the suite's template over `vars` (load_suite sets it)


def read_examples(path: Path, input_field: str, output_field: str) -> list[Example]:
    """Few-shot rows from any JSONL file of objects; each must have both named fields.

    A non-string output (a JSON label) becomes its JSON text, the assistant's answer.
    """
    examples: list[Example] = []
    for number, obj in _rows(path):
        for field in (input_field, output_field):
            if field not in obj:
                raise SuiteError(
                    f"{path}:{number}: the row has no field {field!r} "
                    f"(few_shot names input: {input_field!r}, output: {output_field!r}); "
                    f"its fields are {', '.join(sorted(obj)) or 'none'}"
                )
        examples.append(
            Example(
                line=number,
                vars=obj,
                input=_text(obj[input_field]),
                output=_text(obj[output_field]),
            )
        )
    if not examples:
        raise SuiteError(f"{path}: no rows; write one JSON object per line")
    return examples


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def excluded(row: Example, exclude: Collection[str]) -> bool:
    """Whether `row` is a scored case: its input or its rendered user turn is in `exclude`."""
    return row.input in exclude or (bool(row.prompt) and row.prompt in exclude)


def draw_examples(
    rows: Sequence[Example], k: int, seed: int, exclude: Collection[str] = ()
) -> list[Example]:
    """`k` rows drawn with `seed`, round-robin over their distinct outputs (balanced labels),
    never a row whose input or rendered user turn is in `exclude`. Deterministic for a seed."""
    rng = random.Random(seed)
    groups: dict[str, list[Example]] = {}
    for row in rows:
        if not excluded(row, exclude):
            groups.setdefault(row.output, []).append(row)
    labels = sorted(groups)
    rng.shuffle(labels)
    for label in labels:
        rng.shuffle(groups[label])
    drawn: list[Example] = []
    while len(drawn) < k and any(groups[label] for label in labels):
        for label in labels:
            if groups[label] and len(drawn) < k:
                drawn.append(groups[label].pop())
    return drawn


def render_template(template: str, vars: Mapping[str, Any]) -> str:
    """`template` (str.format) over `vars`; structured vars (a JSON label) render as JSON."""
    flat = {
        k: json.dumps(v, ensure_ascii=False) if isinstance(v, Mapping | list | bool) or v is None
        else v
        for k, v in vars.items()
    }  # fmt: skip
    return template.format(**flat)


def scored_inputs(cases: Sequence[Case], template: str, input_field: str) -> set[str]:
    """What identifies a scored case among few-shot rows: its input value and its user turn."""
    out: set[str] = set()
    for case in cases:
        if input_field in case.vars:
            value = case.vars[input_field]
            out.add(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        with contextlib.suppress(KeyError, IndexError):
            out.add(render_template(template, case.vars))
    return out
