"""`ragtune adapters load|unload|status|audit`: what only a running server can do (its
backends hold the loaded adapters), through its admin API."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from ragtune.errors import InvalidInput, NotFound, RagtuneError, UpstreamUnavailable
from ragtune.settings import Settings

_URL_HELP = "the server's URL (default: http://RAGTUNE_API__HOST:RAGTUNE_API__PORT)"


def add_remote_commands(asub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, help_ in (
        ("load", "load a version on every backend of a running server (warm it before a flip)"),
        ("unload", "unload a version no alias serves from a running server's backends"),
    ):
        p = asub.add_parser(name, help=help_)
        p.add_argument("ref", help="name@version")
        p.add_argument("--url", help=_URL_HELP)
        p.set_defaults(handler=run_remote, remote=name)
    st = asub.add_parser(
        "status", help="a running server's backends: loaded adapters against the registry"
    )
    st.add_argument("--url", help=_URL_HELP)
    st.set_defaults(handler=run_remote, remote="status")
    au = asub.add_parser("audit", help="the last admin actions of a running server")
    au.add_argument("--url", help=_URL_HELP)
    au.add_argument("--limit", type=int, default=20)
    au.set_defaults(handler=run_remote, remote="audit")


def run_remote(args: argparse.Namespace, settings: Settings) -> int:
    token = settings.admin.token
    if token is None:
        raise InvalidInput(
            "set RAGTUNE_ADMIN__TOKEN to the server's admin token to use its admin API"
        )
    url = args.url or f"http://{settings.api.host}:{settings.api.port}"
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    with httpx.Client(base_url=url, headers=headers, timeout=settings.api.request_timeout_s) as c:
        if args.remote in ("load", "unload"):
            _call(c, "POST", f"/admin/adapters/{args.ref}/{args.remote}")
            print(f"{args.ref} {args.remote}ed on every backend of {url}")
        elif args.remote == "status":
            status = _call(c, "GET", "/admin/status")
            print(json.dumps(status, indent=2))
            return 1 if status["drift"] else 0
        else:
            entries = _call(c, "GET", "/admin/audit", params={"limit": args.limit})["entries"]
            for e in entries:
                detail = f" ({e['detail']})" if e.get("detail") else ""
                what = f"{e['action']} {e['target']}: {e['result']}{detail}"
                print(f"{e['time']} {e['actor']} {what}")
    return 0


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(
            f"no ragtune server answered at {client.base_url} ({exc}); start `ragtune serve` "
            f"or pass --url"
        ) from exc
    if response.status_code == 404 and "error" not in response.text:
        raise NotFound(f"{client.base_url} has no admin API; is RAGTUNE_ADMIN__TOKEN set there?")
    if response.is_error:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        error = {404: NotFound, 422: InvalidInput}.get(response.status_code, RagtuneError)
        raise error(f"{response.status_code}: {message}")
    return response.json() if response.content else None
