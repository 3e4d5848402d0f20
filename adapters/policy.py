"""The registry's usage rules, in one place for the API, the CLI and the registry itself.

A version an alias uses cannot be deleted; an alias a route uses cannot be removed. Each rule
raises `InvalidInput` naming who uses the thing and what to do.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from adapters.records import AliasRecord
from ragtune.errors import InvalidInput


def alias_users(ref: str, aliases: Mapping[str, AliasRecord]) -> list[str]:
    """The aliases that point at `ref`, as their target or their rollback target, sorted."""
    return sorted(a.alias for a in aliases.values() if ref in (a.target, a.previous))


def check_delete(ref: str, aliases: Mapping[str, AliasRecord]) -> None:
    """Refuse to delete `ref` while an alias targets it or keeps it as its rollback target."""
    users = alias_users(ref, aliases)
    if users:
        raise InvalidInput(
            f"{ref} is still used by alias {', '.join(users)} (as its target or its rollback "
            f"target); point the alias at another version, or remove it, first"
        )


def routes_using(alias: str, route_adapters: Mapping[str, Collection[str]]) -> list[str]:
    """The routes whose adapter (or allowed overrides) include `alias`, sorted."""
    return sorted(route for route, names in route_adapters.items() if alias in names)


def check_unalias(alias: str, route_adapters: Mapping[str, Collection[str]]) -> None:
    """Refuse to remove `alias` while a route uses it.

    `route_adapters` maps each route name to the aliases it may use (its adapter and its
    allowed overrides), as `service.routes.loader.route_adapters` builds it.
    """
    users = routes_using(alias, route_adapters)
    if users:
        raise InvalidInput(
            f"alias {alias!r} is used by route {', '.join(map(repr, users))}; take it out of "
            f"the routes file (the route's 'adapter' and 'overrides.adapters') and restart the "
            f"service first, or point the alias at another version instead of removing it"
        )
