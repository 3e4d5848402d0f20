"""`ragtune serve`: the HTTP API on the configured Qdrant and backend."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ragtune.settings import Settings

if TYPE_CHECKING:
    from service.admin.gate import SuiteGate

Host = Annotated[
    str | None,
    typer.Option(help="address to listen on (default: RAGTUNE_API__HOST, 127.0.0.1)"),
]
Port = Annotated[int | None, typer.Option(help="port (default: RAGTUNE_API__PORT, 8000)")]
Routes = Annotated[
    Path | None, typer.Option(help="routes file (default: RAGTUNE_API__ROUTES_FILE)")
]
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error"], typer.Option(help="uvicorn's log level")
]


def commands(suite_gate: SuiteGate | None = None) -> typer.Typer:
    """`serve`; `suite_gate` runs eval suites for the admin API's gated alias flips (the
    command tree's root passes evaluation's: this layer cannot import it)."""
    app = typer.Typer()

    @app.command("serve", rich_help_panel="Serving")
    def serve_command(
        host: Host = None, port: Port = None, routes: Routes = None, log_level: LogLevel = "info"
    ) -> int:
        """Serve the chat, summarize and OpenAI-compatible API.

        On embedded Qdrant and the embedded model, unless RAGTUNE_QDRANT__URL or
        RAGTUNE_LLM__VLLM_URL name servers.
        """
        return serve(host, port, routes, log_level, suite_gate=suite_gate)

    return app


def serve(
    host: str | None = None,
    port: int | None = None,
    routes: Path | None = None,
    log_level: Literal["debug", "info", "warning", "error"] = "info",
    *,
    suite_gate: SuiteGate | None = None,
) -> int:
    """Serve the API until Ctrl-C or SIGTERM (requests in flight drain first, up to
    api.shutdown_timeout_s); 1 when it could not start."""
    from service.app import create_app
    from service.server import Server, server_config, sigterm_drains

    settings = Settings()
    api = settings.api.model_copy(
        update={
            k: v
            for k, v in (("host", host), ("port", port), ("routes_file", routes))
            if v is not None
        }
    )
    settings = settings.model_copy(update={"api": api})
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # A bad routes file stops here, with the route and field named.
    app = create_app(settings, suite_gate=suite_gate)
    server = Server(server_config(app, api, log_level), banner=banner(settings))
    # uvicorn re-raises the Ctrl-C it has already handled by shutting down cleanly.
    with contextlib.suppress(KeyboardInterrupt), sigterm_drains(server):
        server.run()
    return 0 if server.started else 1


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def banner(settings: Settings) -> str:
    """What to do once the server is up: the URL and two requests that work (with a key
    placeholder when api.keys is set: the keys themselves are never printed)."""
    host = settings.api.host
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{settings.api.port}"
    if settings.api.keys:
        note = (
            "\n  API keys are on: export RAGTUNE_API_KEY=<one of RAGTUNE_API__KEYS> first "
            "(keys are not printed).\n"
        )
        header = '-H "Authorization: Bearer $RAGTUNE_API_KEY" \\\n    '
        imports, api_key = "import os\n", 'os.environ["RAGTUNE_API_KEY"]'
    else:
        note, header, imports, api_key = "", "", "", '"unused"'
        if not _loopback(host):
            note = (
                f"\n  warning: listening on {host} with no API keys: anyone who can reach this "
                "port can use the model; set RAGTUNE_API__KEYS (see docs/api.md).\n"
            )
    return f"""
ragtune is serving on {url}  (docs: {url}/docs, metrics: {url}/metrics)
{note}
  curl -s {url}/v1/chat -H 'content-type: application/json' \\
    {header}-d '{{"route": "chat", "messages": [{{"role": "user",
          "content": "How does re-ingesting avoid duplicates?"}}]}}'

  python - <<'PY'
{imports}from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key={api_key})
answer = client.chat.completions.create(
    model="chat", messages=[{{"role": "user", "content": "What does ragtune do?"}}]
)
print(answer.choices[0].message.content)
PY
"""
