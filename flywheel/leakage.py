"""The leakage guard: questions an eval suite scores never become training data, so the held-out
set stays held out."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from pathlib import Path

from evaluation.suite import Suite, load_suite, render_messages


def normalize(text: str) -> str:
    """What two questions must share to count as the same: case folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def suite_questions(paths: Iterable[Path]) -> set[str]:
    """Every case's question in the suites at `paths`, normalized: the user turn the suite
    renders, and each case variable that turn is made of (a caller may send the bare value)."""
    held: set[str] = set()
    for path in paths:
        held |= _questions(load_suite(path))
    return held


def _questions(suite: Suite) -> set[str]:
    template = suite.prompt if suite.prompt is not None else _last_user_template(suite)
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    names = {re.split(r"[.\[]", f, maxsplit=1)[0] for f in fields}
    held: set[str] = set()
    for case in suite.case_list:
        turns = [m for m in render_messages(suite, case) if m["role"] == "user"]
        held.add(normalize(turns[-1]["content"]))
        held |= {normalize(v) for k, v in case.vars.items() if k in names and isinstance(v, str)}
    return held - {""}


def _last_user_template(suite: Suite) -> str:
    assert suite.messages is not None, "a loaded suite has a prompt or messages"
    return [m for m in suite.messages if m.role == "user"][-1].content
