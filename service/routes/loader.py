"""Read and validate the routes file; a bad file stops start-up with the route and field named."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from ragtune.errors import InvalidInput, NotFound
from ragtune.settings import Settings
from service.routes.schemas import RoutesFile, RouteSpec

DEFAULT_ROUTES = Path(__file__).with_name("default.yaml")


def routes_path(settings: Settings) -> Path:
    return settings.api.routes_file or DEFAULT_ROUTES


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
