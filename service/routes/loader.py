"""Read and validate the routes file; a bad file stops start-up with the route and field named."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from ragtune.errors import InvalidInput, NotFound
from ragtune.settings import Settings
from service.routes.schemas import BASE_MODEL, RoutesFile, RouteSpec

DEFAULT_ROUTES = Path(__file__).with_name("default.yaml")


def routes_path(settings: Settings) -> Path:
    return settings.api.routes_file or DEFAULT_ROUTES


def load_served_routes(settings: Settings) -> dict[str, RouteSpec]:
    """The routes the API serves, validated and checked against the settings in force."""
    path = routes_path(settings)
    routes = load_routes(path)
    check_against_settings(routes, settings, path)
    return routes


# Route fields that a setting bounds: (the route's field, the setting, the route's value, the
# setting's). A route past one would fail every call with an error that blames the caller.
_SETTING_BOUNDS: tuple[
    tuple[str, str, Callable[[RouteSpec], int], Callable[[Settings], int]], ...
] = (
    (
        "generation.max_tokens",
        "api.max_tokens",
        lambda spec: spec.generation.max_tokens,
        lambda settings: settings.api.max_tokens,
    ),
)


def check_against_settings(routes: Mapping[str, RouteSpec], settings: Settings, path: Path) -> None:
    """Refuse routes whose fields exceed what the settings allow, naming route and field."""
    problems = [
        f"route {name!r}, field {field!r}: {route_value(spec)} is above {setting} "
        f"({setting_value(settings)}), so every call would be refused; lower it or raise "
        f"RAGTUNE_{setting.upper().replace('.', '__')}"
        for name, spec in routes.items()
        for field, setting, route_value, setting_value in _SETTING_BOUNDS
        if route_value(spec) > setting_value(settings)
    ]
    if problems:
        raise InvalidInput(f"routes file {path} does not fit the settings: {'; '.join(problems)}")


def load_routes(path: Path) -> dict[str, RouteSpec]:
    """The routes declared in a YAML file, validated."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"routes file {path} does not exist; set RAGTUNE_API__ROUTES_FILE") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"routes file {path} cannot be read: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"routes file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"routes file {path} must be a mapping with a 'routes' key")
    try:
        return RoutesFile.model_validate(raw).routes
    except ValidationError as exc:
        raise InvalidInput(f"routes file {path} is invalid:\n{_describe(exc)}") from exc


def route_adapters(routes: Mapping[str, RouteSpec]) -> dict[str, set[str]]:
    """Route name -> the adapter aliases (or refs) it may serve: its own and its overrides'.

    "base" in an allow-list means the base model, not an alias, so it is left out.
    """
    used: dict[str, set[str]] = {}
    for name, spec in routes.items():
        names = set(spec.overrides.adapters) - {BASE_MODEL}
        if spec.adapter is not None:
            names.add(spec.adapter)
        used[name] = names
    return used


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if len(loc) >= 2 and loc[0] == "routes":
            where = f"route {loc[1]!r}" + (f", field {'.'.join(loc[2:])!r}" if loc[2:] else "")
        else:
            where = "field " + repr(".".join(loc)) if loc else "the file"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)
