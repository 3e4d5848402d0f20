"""service.limits.nests_deeper: the JSON depth check that runs before a body is parsed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.limits import nests_deeper


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


@pytest.mark.parametrize("limit", [2, 5, 64])
def test_exactly_the_limit_passes_and_one_more_does_not(limit: int) -> None:
    assert not nests_deeper(nested(limit), limit)
    assert nests_deeper(nested(limit + 1), limit)
    objects = '{"a":' * (limit + 1) + "1" + "}" * (limit + 1)
    assert nests_deeper(objects.encode(), limit)
    assert not nests_deeper(objects.encode(), limit + 1)


def test_mixed_arrays_and_objects_count_alike() -> None:
    # {"a":[{"a":[...]}]}: the innermost pairs go first, one level, whatever their kind.
    body = ('{"a":[' * 40 + "1" + "]}" * 40).encode()  # 80 levels
    assert not nests_deeper(body, 80)
    assert nests_deeper(body, 79)
    assert nests_deeper(b'{"a":[{"b":[]}]}', 3)


def test_depth_agrees_with_the_parsed_value() -> None:
    value: Any = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    body = json.dumps(value).encode()  # depth 5: {, [, {, [, {
    assert not nests_deeper(body, 5)
    assert nests_deeper(body, 4)


def test_brackets_in_strings_do_not_count() -> None:
    inside = json.dumps({"text": "[[[[{{{{" * 1_000, "q": 'say "[[[" \\ ]]]'}).encode()
    assert not nests_deeper(inside, 2)
    # An escaped quote does not end the string.
    assert not nests_deeper(b'["\\"[[[[[[[[[[[["]', 2)
    assert nests_deeper(b'[["\\\\"[[[1]]]]]', 2)


def test_long_flat_bodies_pass() -> None:
    flat = ("[" + ",".join(["[]", "{}", '[1,{"a":[]}]'] * 50_000) + "]").encode()
    assert not nests_deeper(flat, 4)
    assert nests_deeper(flat, 2)


def test_invalid_json_is_left_to_the_parser() -> None:
    # Unterminated strings and unbalanced brackets give no false alarm at any depth.
    assert not nests_deeper(b'{"a": "[[[[[[[[[[[[[[[[', 3)
    assert not nests_deeper(b"]]]]]]]]]]]]]]]][", 3)
    assert not nests_deeper(b"", 3)
