"""The registry's usage rules (adapters/policy.py): which versions and aliases are in use."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.policy import check_delete, check_unalias
from adapters.records import AliasRecord
from ragtune.errors import InvalidInput
from service.routes.loader import load_routes, route_adapters

ROUTES = """\
routes:
  served:
    kind: chat
    adapter: tone
    prompt: {user: '{question}'}
  picker:
    kind: chat
    adapter: null
    prompt: {user: '{question}'}
    overrides: {adapters: [base, tone, sql@0123456789abcdef]}
  plain:
    kind: chat
    prompt: {user: '{question}'}
"""


@pytest.fixture
def used(tmp_path: Path) -> dict[str, set[str]]:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return route_adapters(load_routes(path))


def test_route_adapters_are_the_adapter_and_the_overrides(used: dict[str, set[str]]) -> None:
    # "base" is the base model, not an alias; a route without adapters uses none.
    assert used == {"served": {"tone"}, "picker": {"tone", "sql@0123456789abcdef"}, "plain": set()}


def test_unalias_is_refused_naming_every_route_that_uses_the_alias(
    used: dict[str, set[str]],
) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_unalias("tone", used)
    message = str(caught.value)
    assert "alias 'tone' is used by route 'picker', 'served'" in message
    assert "take it out of the routes file" in message
    # Only through an override, too.
    with pytest.raises(InvalidInput, match="used by route 'picker';"):
        check_unalias("sql@0123456789abcdef", used)


@pytest.mark.parametrize("alias", ["other", "base"])
def test_unalias_of_an_alias_no_route_uses(used: dict[str, set[str]], alias: str) -> None:
    check_unalias(alias, used)


def _alias(alias: str, target: str, previous: str | None = None) -> AliasRecord:
    return AliasRecord(alias=alias, target=target, previous=previous, updated_at=datetime.now(UTC))


def test_delete_is_refused_for_a_target_or_a_rollback_target() -> None:
    aliases = {
        "prod": _alias("prod", "sql@b", previous="sql@a"),
        "canary": _alias("canary", "sql@a"),
    }
    with pytest.raises(InvalidInput) as caught:
        check_delete("sql@a", aliases)
    assert str(caught.value) == (
        "sql@a is still used by alias canary, prod (as its target or its rollback target); "
        "point the alias at another version, or remove it, first"
    )
    with pytest.raises(InvalidInput, match="still used by alias prod "):
        check_delete("sql@b", aliases)
    check_delete("sql@c", aliases)
