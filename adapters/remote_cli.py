"""`ragtune adapters load|unload|status|audit`: what only a running server can do (its
backends hold the loaded adapters), through its admin API.

aiohttp, the HTTP client the engines already use: one client stack in the runtime.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragtune.errors import InvalidInput, NotFound, RagtuneError, UpstreamUnavailable
from ragtune.settings import Settings

if TYPE_CHECKING:
    import aiohttp

Url = Annotated[
    str | None,
    typer.Option(help="the server's URL (default: http://RAGTUNE_API__HOST:RAGTUNE_API__PORT)"),
]
Ref = Annotated[str, typer.Argument(metavar="REF", help="name@version")]


class _Admin:
    """Calls to one server's admin API, its answers and errors turned into ragtune's."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import aiohttp

        try:
            async with self.session.request(method, self.url + path, **kwargs) as response:
                text = await response.text()
                status = response.status
        except aiohttp.InvalidURL as exc:
            raise InvalidInput(f"--url {self.url!r} is not a URL like http://host:8000") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"no ragtune server answered at {self.url} ({exc!r}); start `ragtune serve` "
                f"or pass --url"
            ) from exc
        if status == 404 and "error" not in text:
            raise NotFound(f"{self.url} has no admin API; is RAGTUNE_ADMIN__TOKEN set there?")
        if status >= 400:
            try:
                message = json.loads(text)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = text[:300]
            error = {404: NotFound, 422: InvalidInput}.get(status, RagtuneError)
            raise error(f"{status}: {message}")
        return json.loads(text) if text else None


_Command = Callable[[_Admin], Awaitable[int]]


def add_remote_commands(group: typer.Typer) -> None:
    """Add the commands that talk to a running server to the `adapters` group."""
    group.command("load", no_args_is_help=True)(load)
    group.command("unload", no_args_is_help=True)(unload)
    group.command("status")(status)
    group.command("audit")(audit)


def load(ref: Ref, url: Url = None) -> int:
    """Load a version on every backend of a running server (warm it before a flip)."""
    return _run(url, _move(ref, "load"))


def unload(ref: Ref, url: Url = None) -> int:
    """Unload a version no alias serves from a running server's backends."""
    return _run(url, _move(ref, "unload"))


def status(url: Url = None) -> int:
    """A running server's backends: loaded adapters against the registry (exit 1 on drift)."""
    return _run(url, _status)


def audit(
    url: Url = None, limit: Annotated[int, typer.Option(help="how many entries")] = 20
) -> int:
    """The last admin actions of a running server."""

    async def entries(admin: _Admin) -> int:
        for e in (await admin.call("GET", "/admin/audit", params={"limit": limit}))["entries"]:
            detail = f" ({e['detail']})" if e.get("detail") else ""
            what = f"{e['action']} {e['target']}: {e['result']}{detail}"
            print(f"{e['time']} {e['actor']} {what}")
        return 0

    return _run(url, entries)


def _move(ref: str, action: str) -> _Command:
    async def move(admin: _Admin) -> int:
        await admin.call("POST", f"/admin/adapters/{ref}/{action}")
        print(f"{ref} {action}ed on every backend of {admin.url}")
        return 0

    return move


async def _status(admin: _Admin) -> int:
    answer = await admin.call("GET", "/admin/status")
    print(json.dumps(answer, indent=2))
    return 1 if answer["drift"] else 0


def _run(url: str | None, command: _Command) -> int:
    """Run `command(admin)` against the server's admin API, with this settings' token."""
    settings = Settings()
    token = settings.admin.token
    if token is None:
        raise InvalidInput(
            "set RAGTUNE_ADMIN__TOKEN to the server's admin token to use its admin API"
        )
    base = (url or f"http://{settings.api.host}:{settings.api.port}").rstrip("/")

    async def run() -> int:
        import aiohttp  # imported when used: the other commands start faster

        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
            timeout=aiohttp.ClientTimeout(total=settings.api.request_timeout_s),
        ) as session:
            return await command(_Admin(session, base))

    return asyncio.run(run())
