"""`ragtune adapters register|list|aliases|alias|rollback|unalias|delete`: the registry on
disk, each change recorded in its audit log."""

from __future__ import annotations

import contextlib
import getpass
import json
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Annotated

import typer

from adapters.archive import extract_archive
from adapters.audit import AuditLog
from adapters.gating import CliGate, record_verdict, refuse_unless_passed
from adapters.policy import check_unalias
from adapters.registry import Registry, check_name
from adapters.validate import ModelSpec
from engine.model import resolve_base_model
from ragtune.console import plain_table, print_table
from ragtune.errors import GateFailed, InvalidInput, NotFound, RagtuneError
from ragtune.settings import Settings

# The adapters each route of the server's routes file may use; the routes belong to the
# service, a layer above, so the command tree's root (cli/main.py) passes this in.
RouteAdapters = Callable[[Settings], Mapping[str, Collection[str]]]

SYNC_NOTE = (
    "The registry lives in RAGTUNE_ADAPTERS__ROOT (default <data_dir>/adapters); running "
    "servers follow changes to it within RAGTUNE_ADAPTERS__SYNC_INTERVAL_S seconds."
)
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def add_registry_commands(
    group: typer.Typer, route_adapters: RouteAdapters, suite_gate: CliGate | None = None
) -> None:
    """Add the registry's commands to the `adapters` group; `route_adapters` reads the routes
    `unalias` must not break; `suite_gate` runs the suite of `alias --require-suite`."""
    group.command("register", epilog=SYNC_NOTE, no_args_is_help=True)(register)
    group.command("list", epilog=SYNC_NOTE)(list_)
    group.command("aliases", epilog=SYNC_NOTE)(aliases)

    @group.command("alias", epilog=SYNC_NOTE, no_args_is_help=True)
    def alias(
        alias: Annotated[str, typer.Argument(metavar="ALIAS", help="alias to create or move")],
        ref: Annotated[
            str,
            typer.Argument(
                metavar="REF", help="name@version, or another alias (its current target)"
            ),
        ],
        require_suite: Annotated[
            Path | None,
            typer.Option(
                metavar="SUITE.yaml",
                help="first run this eval suite with REF answering in ALIAS's place; move the "
                "alias only if every gate holds (exit 1, naming the failing gates, otherwise)",
            ),
        ] = None,
    ) -> int:
        """Point an alias at a version (with --require-suite, only once its suite passes)."""
        return run_alias(alias, ref, require_suite, suite_gate)

    group.command("rollback", epilog=SYNC_NOTE, no_args_is_help=True)(rollback)

    @group.command("unalias", epilog=SYNC_NOTE, no_args_is_help=True)
    def unalias(
        alias: Annotated[str, typer.Argument(metavar="ALIAS", help="the alias to remove")],
    ) -> int:
        """Remove an alias; refused while a route of the server's routes file uses it."""
        return run_unalias(alias, route_adapters)

    group.command("delete", epilog=SYNC_NOTE, no_args_is_help=True)(delete)


def open_registry(settings: Settings, *, with_model: bool = False) -> Registry:
    """The registry under the settings' adapter root; `with_model` checks against the base."""
    model = ModelSpec.from_model_dir(Path(resolve_base_model(settings))) if with_model else None
    return Registry(
        settings.adapters_root(),
        model,
        max_rank=settings.llm.max_lora_rank,
        max_bytes=settings.adapters.max_adapter_bytes,
    )


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user entry (some containers)
        return "cli:unknown"


@contextlib.contextmanager
def _audited(settings: Settings, action: str, target: str) -> Iterator[dict[str, str]]:
    """Log the command's outcome to `<root>/audit.jsonl`; the body may set "detail"."""
    log = AuditLog(settings.adapters_root() / "audit.jsonl")
    outcome = {"detail": ""}
    try:
        yield outcome
    except (InvalidInput, NotFound, GateFailed) as exc:
        log.append(_actor(), action, target, "refused", str(exc))
        raise
    except RagtuneError as exc:
        log.append(_actor(), action, target, "failed", str(exc))
        raise
    log.append(_actor(), action, target, "ok", outcome["detail"])


# The same record for the registry changes made by the layers above (flywheel's sweep, retrain).
audited = _audited


def _followed(settings: Settings) -> None:
    print(f"running servers follow within {settings.adapters.sync_interval_s:g}s")


def register(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="PEFT adapter folder, or a zip / tar.gz of one")
    ],
    name: Annotated[str, typer.Option(help="adapter name (letters, digits, . _ -)")],
    description: Annotated[str, typer.Option(help="a line saying what the adapter is for")] = "",
    alias: Annotated[
        str | None, typer.Option(help="also point this alias at the new version")
    ] = None,
    keep_alias: Annotated[
        bool,
        typer.Option(
            "--keep-alias",
            help="with --alias: leave the alias as it is when it exists already (`make run` "
            "registers the shipped adapters without undoing a retrained one)",
        ),
    ] = False,
) -> int:
    """Validate an adapter folder (or a zip / tar.gz of one) and store it as a version."""
    settings = Settings()
    if keep_alias and not alias:
        raise InvalidInput("--keep-alias needs --alias ALIAS")
    with _audited(settings, "register", name) as outcome:
        registry = open_registry(settings, with_model=True)
        with tempfile.TemporaryDirectory(prefix="ragtune-upload-") as tmp:
            source = path
            if source.is_file():
                source = extract_archive(
                    source, Path(tmp) / "unpacked", max_bytes=registry.max_bytes
                )
            record = registry.register(source, name, description)
        outcome["detail"] = record.ref
    print(f"registered {record.ref} (rank {record.rank}, {record.size_bytes} bytes)")
    if alias and keep_alias:
        current = registry.snapshot().aliases.get(alias)
        if current is not None:
            print(f"{alias} -> {current.target} (kept)")
            alias = None
    if alias:
        with _audited(settings, "alias", alias) as outcome:
            moved = registry.set_alias(alias, record.ref)
            outcome["detail"] = f"{moved.previous} -> {moved.target}"
        print(f"{moved.alias} -> {moved.target}")
    _followed(settings)
    return 0


def list_(as_json: Json = False) -> int:
    """Registered adapter versions, with the aliases that point at each."""
    state = open_registry(Settings()).snapshot()
    records = sorted(state.records, key=lambda r: (r.name, r.created_at))
    if as_json:
        print(json.dumps([{"ref": r.ref, **r.model_dump(mode="json")} for r in records], indent=2))
        return 0
    if not records:
        print("no adapters registered; add one with `ragtune adapters register PATH --name NAME`")
        return 0
    used: dict[str, list[str]] = {}
    for a in state.aliases.values():
        used.setdefault(a.target, []).append(a.alias)
    table = plain_table()
    table.add_column("REF", style="cyan")
    table.add_column("RANK", justify="right")
    table.add_column("BYTES", justify="right")
    table.add_column("CREATED (UTC)")
    table.add_column("ALIASES", style="green")
    for r in records:
        table.add_row(
            r.ref,
            str(r.rank),
            str(r.size_bytes),
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            ",".join(sorted(used.get(r.ref, []))) or "-",
        )
    print_table(table)
    return 0


def aliases(as_json: Json = False) -> int:
    """Aliases, their targets and the targets a rollback returns to."""
    found = open_registry(Settings()).aliases()
    if as_json:
        print(json.dumps({k: a.model_dump(mode="json") for k, a in found.items()}, indent=2))
        return 0
    if not found:
        print("no aliases; add one with `ragtune adapters alias ALIAS name@version`")
        return 0
    table = plain_table()
    table.add_column("ALIAS", style="green")
    table.add_column("TARGET", style="cyan")
    table.add_column("PREVIOUS")
    for name, a in sorted(found.items()):
        table.add_row(name, a.target, a.previous or "-")
    print_table(table)
    return 0


def run_alias(
    alias: str, ref: str, require_suite: Path | None = None, suite_gate: CliGate | None = None
) -> int:
    """Point `alias` at `ref`; with `require_suite`, only if the suite's gates hold with the
    version answering in the alias's place (its summary is kept on the version's record)."""
    settings = Settings()
    target = alias if require_suite is None else f"{alias} (require-suite {require_suite})"
    with _audited(settings, "alias", target) as outcome:
        registry = open_registry(settings)
        verdict = ""
        if require_suite is not None:
            if suite_gate is None:  # only a command tree built without evaluation
                raise InvalidInput("--require-suite: this command was built without eval gating")
            if not require_suite.is_file():
                raise NotFound(f"--require-suite: {require_suite} is not a file")
            check_name(alias, "alias")
            record = registry.resolve(ref)
            result = suite_gate(settings, require_suite, alias, record.ref)
            record_verdict(registry, record.ref, result)
            refuse_unless_passed(result, alias, record.ref)
            ref, verdict = record.ref, f"; {result.describe()}"
        moved = registry.set_alias(alias, ref)
        outcome["detail"] = f"{moved.previous} -> {moved.target}{verdict}"
    print(f"{moved.alias} -> {moved.target}{verdict}")
    _followed(settings)
    return 0


def rollback(
    alias: Annotated[str, typer.Argument(metavar="ALIAS", help="the alias to move back")],
) -> int:
    """Point an alias back at its previous target."""
    settings = Settings()
    with _audited(settings, "rollback", alias) as outcome:
        moved = open_registry(settings).rollback(alias)
        outcome["detail"] = f"{moved.previous} -> {moved.target}"
    print(f"{moved.alias} -> {moved.target} (was {moved.previous})")
    _followed(settings)
    return 0


def run_unalias(alias: str, route_adapters: RouteAdapters) -> int:
    """Remove `alias` unless a route uses it (the rule the admin API applies too)."""
    settings = Settings()
    with _audited(settings, "unalias", alias):
        check_unalias(alias, route_adapters(settings))
        open_registry(settings).remove_alias(alias)
    print(f"removed alias {alias}")
    _followed(settings)
    return 0


def delete(ref: Annotated[str, typer.Argument(metavar="REF", help="name@version")]) -> int:
    """Delete a version no alias points at (as its target or its rollback target)."""
    settings = Settings()
    with _audited(settings, "delete", ref):
        open_registry(settings).delete(ref)
    print(f"deleted {ref}")
    _followed(settings)
    return 0
