"""The cases `ragtune dataset build` reads: `{"question": ..., "answer": ..., "id"?: ...}` a line,
every malformed line refused with its number."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.dataset import invalid_lines
from ragtune.errors import InvalidInput, NotFound

_KEYS = ("question", "answer", "id")
# Enough to show the pattern of a broken file without flooding the terminal.


@dataclass(frozen=True)
class BuildCase:
    """One training case: a question asked on a route and the answer the adapter should give."""

    id: str
    line: int
    question: str
    answer: str


def read_build_cases(path: Path) -> list[BuildCase]:
    """The cases of `path`; refuse the file naming every bad line (up to ten) and its problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"--cases: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--cases: {path} cannot be read as UTF-8 text: {exc}") from exc
    cases: list[BuildCase] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            case = _parse(raw, number)
            if case.id in seen:
                raise ValueError(f"duplicate id {case.id!r} (first on line {seen[case.id]})")
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        seen[case.id] = number
        cases.append(case)
    if problems:
        raise invalid_lines(
            path,
            problems,
            'Each line must be {"question": "...", "answer": "...", "id": "..." (optional)}',
        )
    if not cases:
        raise InvalidInput(f"{path} holds no cases; write one JSON object per line")
    return cases


def _parse(raw: str, number: int) -> BuildCase:
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; a case has {', '.join(_KEYS)}")
    for key in ("question", "answer"):
        if key not in data:
            raise ValueError(f'missing "{key}"')
        if not isinstance(data[key], str) or not data[key].strip():
            raise ValueError(f'"{key}" must be a non-empty string')
    case_id = data.get("id", str(number))
    if not isinstance(case_id, str | int) or isinstance(case_id, bool):
        raise ValueError('"id" must be a string')
    return BuildCase(str(case_id), number, data["question"], data["answer"])
