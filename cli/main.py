"""The `ragtune` command: one typer app composed of each package's own commands."""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.text import Text
from typer import rich_utils
from typer.core import TyperGroup

from adapters import cli as adapters_cli
from engine import cli as engine_cli
from engine import generate_cli
from evaluation import cli as eval_cli
from flywheel import cli as flywheel_cli
from ingest import cli as ingest_cli
from ragtune.console import stderr_console
from ragtune.errors import InvalidInput, NotFound, RagtuneError
from ragtune.settings import Settings
from service import cli as service_cli

if TYPE_CHECKING:
    from adapters.gating import GateVerdict
    from service.admin.gate import GateServices

# Usage errors are click's ClickException family: click's own in older typer, typer's vendored
# copy of click in newer (0.27 here). typer.BadParameter, public in both, descends from it.
_USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)
_HELP = (
    "RAG and LoRA adapters, served per route. Settings come from RAGTUNE_* environment "
    "variables (see README); `ragtune COMMAND --help` says what each command takes."
)


class _Ragtune(TyperGroup):
    """Turns what a command raises into one line on stderr and an exit code, never a
    traceback: 2 for bad input (arguments, settings, names), 1 for other failures, 130 on
    Ctrl-C."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            problems = "; ".join(
                f"RAGTUNE_{'__'.join(str(p).upper() for p in err['loc'])}: {err['msg']}"
                for err in exc.errors()
            )
            _error(f"invalid settings: {problems}")
            raise typer.Exit(2) from None
        except SettingsError as exc:  # a value that is not JSON where a list or dict goes
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            _error(
                f"invalid settings: {exc}{cause}; list and mapping values of RAGTUNE_* "
                f"variables are JSON"
            )
            raise typer.Exit(2) from None
        except (InvalidInput, NotFound) as exc:
            _error(str(exc))
            raise typer.Exit(2) from None
        except RagtuneError as exc:
            _error(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stderr_console().print("ragtune: interrupted; run the same command again to finish")
            raise typer.Exit(130) from None


def _error(message: str) -> None:
    stderr_console().print(Text.assemble(("ragtune: error: ", "bold red"), message))


def _route_adapters(settings: Settings) -> Mapping[str, Collection[str]]:
    """The adapters each route of the server's routes file may use (for `adapters unalias`)."""
    from service.routes.loader import load_routes, route_adapters, routes_path

    return route_adapters(load_routes(routes_path(settings)))


def _alias_gate(settings: Settings, suite: Path, alias: str, ref: str) -> GateVerdict:
    """`adapters alias --require-suite`: the suite in this process, `ref` answering for `alias`."""
    from evaluation.promotion import gate_in_process

    return gate_in_process(settings, suite, alias, ref)


async def _serve_gate(suite: Path, alias: str, ref: str, services: GateServices) -> GateVerdict:
    """The admin API's `require_suite`: the suite on the server's own services."""
    from evaluation.promotion import service_gate

    return await service_gate(suite, alias, ref, services)


def _group(app: typer.Typer, name: str) -> typer.Typer:
    """The group `name` a package's command tree holds, for a layer above to add commands to
    (the adapters layer cannot import flywheel's sweep and retrain)."""
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    raise LookupError(f"no command group {name!r}")


def build_app() -> typer.Typer:
    """The whole command tree; building it reads no settings, so `--help` always works."""
    app = typer.Typer(
        name="ragtune",
        help=_HELP,
        cls=_Ragtune,
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
        pretty_exceptions_enable=False,
    )
    evals = typer.Typer(
        help="Measure quality: retrieval on a BEIR set, or a suite of cases through several "
        "strategies side by side.",
        no_args_is_help=True,
    )
    eval_cli.register(evals)
    app.add_typer(ingest_cli.commands(evals))
    adapters = adapters_cli.commands(_route_adapters, _alias_gate)
    flywheel_cli.add_adapter_commands(_group(adapters, "adapters"))
    app.add_typer(adapters)
    app.add_typer(flywheel_cli.dataset_commands())
    app.add_typer(engine_cli.commands())
    app.add_typer(generate_cli.commands())
    app.add_typer(service_cli.commands(_serve_gate))
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; errors print one line that says what to do."""
    command = typer.main.get_command(build_app())
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = command.main(args=args, prog_name="ragtune", standalone_mode=False)
    except _USAGE_ERROR as exc:
        rich_utils.rich_format_error(cast(Any, exc))
        code: int = getattr(exc, "exit_code", 2)
        return code
    except typer.Abort:  # end of input at a prompt
        stderr_console().print("ragtune: aborted")
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
