"""What a request may change on its route: the route by name and kind, the adapter, the
sampling. Chat and summarize apply the same rules through these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from engine.types import GENERATION_FIELDS, SamplingParams
from ragtune.errors import InvalidInput, NotFound
from service.routes.schemas import BASE_MODEL, RouteKind, RouteSpec


def find_route(routes: Mapping[str, RouteSpec], name: str, kind: RouteKind) -> RouteSpec:
    """The route called `name`, which must be of `kind`."""
    spec = routes.get(name)
    if spec is None:
        raise NotFound(f"route {name!r} does not exist; routes: {', '.join(sorted(routes))}")
    if spec.kind != kind:
        raise InvalidInput(f"route {name!r} is a {spec.kind} route, not a {kind} route")
    return spec


def adapter_for(route: str, spec: RouteSpec, asked: str | None) -> str | None:
    """The alias to serve with (None: the base model): the route's, or the caller's choice
    from the route's allow-list."""
    if asked is None:
        return spec.adapter
    wanted = None if asked == BASE_MODEL else asked
    if not spec.allows_adapter(wanted):
        allowed = sorted({spec.adapter or BASE_MODEL, *spec.overrides.adapters})
        raise InvalidInput(
            f"adapter: route {route!r} allows {', '.join(map(repr, allowed))}, not {asked!r}"
        )
    return wanted


def sampling(
    route: str, spec: RouteSpec, asked: Mapping[str, Any], max_tokens: int
) -> SamplingParams:
    """The route's generation settings with the caller's allowed changes applied; `max_tokens`
    is the server's limit (api.max_tokens)."""
    values = spec.generation.model_dump()
    for name, value in asked.items():
        if value is None:
            continue
        if name not in GENERATION_FIELDS or name not in spec.overrides.generation:
            raise InvalidInput(f"{name}: route {route!r} does not let callers change it")
        values[name] = value
    if values["max_tokens"] > max_tokens:
        raise InvalidInput(
            f"max_tokens: {values['max_tokens']} is above this server's limit of {max_tokens}"
        )
    try:
        return SamplingParams.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        raise InvalidInput(f"{field}: {error['msg']}") from exc
