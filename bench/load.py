"""Load and soak: many concurrent clients on a running ragtune for a fixed time, on loopback.

The clients mix the routes a deployment serves: `/v1/chat` on a RAG route and on a route
serving an adapter alias, `/v1/summarize`, and the OpenAI-compatible `/v1/chat/completions`,
streamed and not. Meanwhile a flipper points the alias at the other of two registered versions
of a real LoRA adapter every few seconds through the admin API. After `--warmup` seconds of
load, `--duration` seconds are measured: requests/s and p50/p95/p99 latency per kind and
overall, errors by kind (a non-2xx answer, a stream that breaks or ends on an error event, an
exception: warm-up included; zero expected), and the server's RSS (from /proc) at start,
after warm-up and at the end. Memory is flat when the end is within 5% of after warm-up.
Exit status 1, with a line saying which, when there were errors or memory was not flat.

By default it starts the server itself: `ragtune serve` in a subprocess on a free loopback
port, a temporary data dir, the tiny test model (or `--model`), two versions of a LoRA adapter
registered behind an alias, a small ingested corpus, a random admin token. `--url` targets one
already running on loopback instead (`--pid` for its memory; the admin token in
RAGTUNE_ADMIN__TOKEN, an API key in RAGTUNE_API_KEY when it wants one; the route and alias
names as options; the alias's adapter must have a second version to flip to).

The clients are one asyncio process and stay light, but they share this machine's cores with
the server: the report says how much CPU each took.

    python -m bench.load [--duration 300] [--clients 16] [--warmup 30] [--seed 0] [--model DIR]
                         [--url http://127.0.0.1:PORT [--pid PID]] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.api import ragtune_totals
from bench.load_server import (
    Memory,
    Target,
    cpu_s,
    given_server,
    loopback_url,
    own_server,
    progress,
    stage_means,
    version_pair,
)
from bench.loadgen import Run

# Each kind: the path, the route it asks (the RAG one, the adapter one, or summarize's), and
# whether it streams.
KINDS = {
    "chat-rag": ("/v1/chat", "rag", False),
    "chat-rag-stream": ("/v1/chat", "rag", True),
    "chat-adapter": ("/v1/chat", "adapter", False),
    "chat-adapter-stream": ("/v1/chat", "adapter", True),
    "summarize": ("/v1/summarize", "summarize", False),
    "openai": ("/v1/chat/completions", "rag", False),
    "openai-stream": ("/v1/chat/completions", "adapter", True),
}
FLAT_WITHIN = 0.05
REQUEST_TIMEOUT_S = 120.0
QUESTIONS = (
    "When do orchard keepers prune apple trees?",
    "What do the Voyager probes carry?",
    "How long should bread dough be kneaded?",
    "How often does high tide come at the harbour?",
    "What does a sourdough starter need?",
    "What powers the instruments of the Voyager probes?",
)
SUMMARY_TEXT = (
    "Apples grow on trees in temperate orchards. Orchard keepers prune apple trees in winter "
    "so that the fruit gets sunlight in summer. The Voyager probes left the solar system "
    "carrying golden records, and their generators still power a few instruments."
)


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    stream: bool


class Failed(Exception):
    """A request that did not succeed: `reason` is its error class for the counts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def requests_for(target: Target, max_tokens: int) -> dict[str, list[Request]]:
    """Every kind's requests, encoded once (one per question)."""
    routes = {
        "rag": target.rag_route,
        "adapter": target.adapter_route,
        "summarize": target.summarize_route,
    }
    requests: dict[str, list[Request]] = {}
    for kind, (path, route, stream) in KINDS.items():
        body: dict[str, Any] = {"max_tokens": max_tokens, "stream": stream}
        if path == "/v1/summarize":
            body |= {"route": routes[route], "text": SUMMARY_TEXT}
            del body["stream"]  # it does not stream
            requests[kind] = [Request(path, json.dumps(body).encode(), stream)]
            continue
        # The OpenAI endpoint names the route as the model.
        body["model" if path == "/v1/chat/completions" else "route"] = routes[route]
        requests[kind] = [
            Request(
                path,
                json.dumps(body | {"messages": [{"role": "user", "content": q}]}).encode(),
                stream,
            )
            for q in QUESTIONS
        ]
    return requests


async def send(session: aiohttp.ClientSession, url: str, request: Request) -> str | None:
    """One request read to its end; the adapter version that answered (None: the base)."""
    async with session.post(url + request.path, data=request.body) as response:
        if not 200 <= response.status < 300:
            raise Failed(f"HTTP {response.status}", (await response.text())[:300])
        if not request.stream:
            data = await response.json()
            extra = data.get("ragtune") or data  # OpenAI's shape carries it in `ragtune`
            adapter: str | None = extra.get("adapter")
            return adapter
        return await read_stream(response, openai=request.path == "/v1/chat/completions")


async def read_stream(response: aiohttp.ClientResponse, *, openai: bool) -> str | None:
    """Read an SSE answer to [DONE]; a stream that ends on an error event, ends without its
    final event or without [DONE] fails."""
    adapter, finished, closed = None, False, False
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line.startswith("data: "):
            continue  # blank separators and ": ping" keep-alives
        if line == "data: [DONE]":
            closed = True
            break
        event = json.loads(line[6:])
        if "error" in event or event.get("type") == "error":
            raise Failed("stream error event", line[:300])
        if not openai:  # ragtune's events: sources, deltas, done
            adapter = event.get("adapter", adapter) if event.get("type") == "sources" else adapter
            finished = finished or event.get("type") == "done"
        elif event.get("choices") and event["choices"][0].get("finish_reason"):  # OpenAI's
            finished = True
            adapter = (event.get("ragtune") or {}).get("adapter")
    if not (finished and closed):
        missing = "[DONE]" if finished else "its final event"
        raise Failed("broken stream", f"the stream ended without {missing}")
    return adapter


@dataclass
class KindStats:
    latencies_s: list[float] = field(default_factory=list)  # measured window only
    requests: int = 0  # warm-up included
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)

    def error(self, reason: str, detail: str) -> None:
        self.requests += 1
        self.errors[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(detail[:300])

    def figures(self, wall_s: float) -> dict[str, Any]:
        run = Run(self.latencies_s, wall_s=wall_s)
        measured = bool(self.latencies_s)
        return {
            "requests": self.requests,
            "measured": len(self.latencies_s),
            "req_s": round(run.per_s, 2) if measured else 0.0,
            **{f"p{q}_ms": round(run.p(q / 100), 1) if measured else None for q in (50, 95, 99)},
            "errors": sum(self.errors.values()),
            "errors_by_reason": dict(self.errors),
            "error_examples": self.examples,
            "versions_seen": dict(self.versions),
        }


@dataclass
class Recorder:
    kinds: dict[str, KindStats] = field(default_factory=lambda: {k: KindStats() for k in KINDS})
    flips: KindStats = field(default_factory=KindStats)
    measure_from: float = float("inf")

    def ok(self, stats: KindStats, started: float, ended: float, version: str | None) -> None:
        stats.requests += 1
        if version:
            stats.versions[version] += 1
        if started >= self.measure_from:
            stats.latencies_s.append(ended - started)


def deck(rng: random.Random) -> Iterator[str]:
    """The kinds in a shuffled order, again and again: the 1st to 7th requests the clients
    start cover every kind, and so do the 8th to 14th..., so a short run has them all."""
    while True:
        yield from rng.sample(list(KINDS), len(KINDS))


async def client(
    session: aiohttp.ClientSession,
    target: Target,
    requests: dict[str, list[Request]],
    recorder: Recorder,
    kinds: tuple[Iterator[str], random.Random],
    stop_at: float,
) -> None:
    """Requests back to back, each of the next kind in the shared deck, until `stop_at`."""
    cards, rng = kinds
    while time.monotonic() < stop_at:
        kind = next(cards)
        request = rng.choice(requests[kind])
        stats = recorder.kinds[kind]
        started = time.monotonic()
        try:
            version = await send(session, target.url, request)
        except Failed as exc:
            stats.error(exc.reason, str(exc))
        except Exception as exc:  # any other failure is an error of this kind, not a crash
            stats.error(type(exc).__name__, f"{type(exc).__name__}: {exc}")
        else:
            recorder.ok(stats, started, time.monotonic(), version)


async def flipper(
    session: aiohttp.ClientSession,
    target: Target,
    refs: tuple[str, str],
    recorder: Recorder,
    every_s: float,
    stop_at: float,
) -> None:
    """Point the alias at the other version every `every_s` seconds until `stop_at`."""
    headers = {"Authorization": f"Bearer {target.admin_token}"}
    url = f"{target.url}/admin/aliases/{target.alias}"
    turn = 1  # the alias starts on refs[0]
    while time.monotonic() + every_s < stop_at:
        await asyncio.sleep(every_s)
        ref = refs[turn % 2]
        started = time.monotonic()
        try:
            async with session.put(url, json={"target": ref}, headers=headers) as response:
                if response.status != 200:
                    raise Failed(f"HTTP {response.status}", (await response.text())[:300])
                answer = await response.json()
                if answer.get("target") != ref:
                    raise Failed("not flipped", f"the alias points at {answer.get('target')}")
        except Failed as exc:
            recorder.flips.error(exc.reason, str(exc))
        except Exception as exc:
            recorder.flips.error(type(exc).__name__, f"{type(exc).__name__}: {exc}")
        else:
            recorder.ok(recorder.flips, started, time.monotonic(), ref)
            turn += 1


async def run_load(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, then the measured window, then the figures."""
    recorder, memory = Recorder(), Memory(target.pid)
    requests = requests_for(target, args.max_tokens)
    headers = {"Content-Type": "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    # Idle connections go before uvicorn's keep-alive limit (5 s) drops them.
    connector = aiohttp.TCPConnector(limit=args.clients + 4, keepalive_timeout=4.0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    # The admin calls send their own Authorization header, which replaces the API key's.
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        try:
            refs = await version_pair(session, target)
        except aiohttp.ClientError as exc:
            raise SystemExit(f"bench.load: {target.url} does not answer: {exc}") from None
        memory.mark("start")
        progress(
            f"{args.clients} clients: {args.warmup:g} s of warm-up, then {args.duration:g} s "
            f"measured; the alias flips between {refs[0]} and {refs[1]}"
        )
        t0 = time.monotonic()
        recorder.measure_from = t0 + args.warmup
        stop_at = recorder.measure_from + args.duration
        rng = random.Random(args.seed)
        kinds = (deck(rng), rng)
        clients = [
            asyncio.create_task(client(session, target, requests, recorder, kinds, stop_at))
            for _ in range(args.clients)
        ]
        flips = asyncio.create_task(
            flipper(session, target, refs, recorder, args.flip_every, stop_at)
        )
        sampler = asyncio.create_task(memory.sample(t0))
        await asyncio.sleep(max(0.0, recorder.measure_from - time.monotonic()))
        memory.mark("after_warmup")
        cpu = (time.process_time(), cpu_s(target.pid) if target.pid else 0.0)
        stages = await asyncio.to_thread(ragtune_totals, target.url)
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        memory.mark("end")  # still under load, as after warm-up
        stages_end = await asyncio.to_thread(ragtune_totals, target.url)
        # Bounded: every request has its own timeout.
        await asyncio.wait_for(asyncio.gather(*clients, flips), REQUEST_TIMEOUT_S + 30)
        wall = time.monotonic() - recorder.measure_from
        clients_cpu = time.process_time() - cpu[0]
        server_cpu = cpu_s(target.pid) - cpu[1] if target.pid else None
        sampler.cancel()
        memory.mark("drained")
    overall = KindStats()
    for stats in recorder.kinds.values():
        overall.latencies_s += stats.latencies_s
        overall.requests += stats.requests
        overall.errors.update(stats.errors)
        overall.versions.update(stats.versions)
    growth = memory.growth()
    cores = len(os.sched_getaffinity(0))
    return {
        "config": {
            "url": target.url,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "seed": args.seed,
            "max_tokens": args.max_tokens,
            "flip_every_s": args.flip_every,
            "model": args.model_name,
        },
        "kinds": {kind: stats.figures(wall) for kind, stats in recorder.kinds.items()},
        "overall": overall.figures(wall),
        "flips": {**recorder.flips.figures(wall), "versions": list(refs)},
        "server_stage_ms": stage_means(stages, stages_end),
        "memory": {
            "pid": target.pid,
            **{f"{name}_mib": round(kib / 1024, 1) for name, kib in memory.points_kib.items()},
            "growth_after_warmup": None if growth is None else round(growth, 4),
            "flat": None if growth is None else abs(growth) <= FLAT_WITHIN,
            "series_mib": [(t, round(kib / 1024, 1)) for t, kib in memory.series],
        },
        "cpu": {
            "cores": cores,
            "clients_cpu_s": round(clients_cpu, 1),
            "server_cpu_s": None if server_cpu is None else round(server_cpu, 1),
            "measured_s": round(wall, 1),
        },
    }


def verdict(report: dict[str, Any]) -> list[str]:
    """What failed: errors, memory that is not flat; empty when the run passed."""
    failures = []
    errors = report["overall"]["errors"] + report["flips"]["errors"]
    if errors:
        by_kind = {k: v["errors"] for k, v in report["kinds"].items() if v["errors"]}
        if report["flips"]["errors"]:
            by_kind["flip"] = report["flips"]["errors"]
        failures.append(f"{errors} errors ({', '.join(f'{k}: {n}' for k, n in by_kind.items())})")
    memory = report["memory"]
    if memory["flat"] is False:
        failures.append(
            f"memory not flat: the server's RSS went from {memory['after_warmup_mib']} MiB after "
            f"warm-up to {memory['end_mib']} MiB at the end "
            f"({100 * memory['growth_after_warmup']:+.1f}%, limit ±{100 * FLAT_WITHIN:g}%)"
        )
    return failures


def print_report(report: dict[str, Any]) -> None:
    config, cpu, memory = report["config"], report["cpu"], report["memory"]
    print(
        f"{config['clients']} clients for {config['duration_s']:g} s after "
        f"{config['warmup_s']:g} s of warm-up on {config['url']} (model {config['model']}, "
        f"max {config['max_tokens']} tokens), the alias flipped every {config['flip_every_s']:g} s"
    )
    print(
        f"{'kind':<20}{'requests':>9}{'measured':>9}{'req/s':>7}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>7}"
    )
    rows = [*report["kinds"].items(), ("all", report["overall"]), ("alias flip", report["flips"])]
    for kind, f in rows:
        ms = "".join(
            f"{f[p]:>9.1f}" if f[p] is not None else f"{'-':>9}"
            for p in ("p50_ms", "p95_ms", "p99_ms")
        )
        print(
            f"{kind:<20}{f['requests']:>9}{f['measured']:>9}{f['req_s']:>7.1f}{ms}{f['errors']:>7}"
        )
    print(
        "requests, errors: the whole run, warm-up included; measured (started after the "
        "warm-up), req/s, latencies: the measured window"
    )
    print(
        "answered by: "
        + ", ".join(f"{v} x{n}" for v, n in report["overall"]["versions_seen"].items())
    )
    if memory["flat"] is None:
        print("server memory: not sampled (give --pid with --url)")
    else:
        print(
            f"server RSS: {memory['start_mib']} MiB at start, {memory['after_warmup_mib']} MiB "
            f"after warm-up, {memory['end_mib']} MiB at the end "
            f"({100 * memory['growth_after_warmup']:+.1f}%: "
            f"{'flat' if memory['flat'] else 'NOT flat'}, limit ±{100 * FLAT_WITHIN:g}%)"
        )
    print(
        "server's own mean time per stage (its /metrics, measured window): "
        + "; ".join(
            f"{route}: " + ", ".join(f"{stage} {ms:g} ms" for stage, ms in means.items())
            for route, means in report["server_stage_ms"].items()
        )
    )
    server = "" if cpu["server_cpu_s"] is None else f", the server {cpu['server_cpu_s']} CPU-s"
    print(
        f"CPU: {cpu['cores']} cores, shared by the server and these clients (latency includes "
        f"waiting for a core); over the {cpu['measured_s']} s measured the clients used "
        f"{cpu['clients_cpu_s']} CPU-s{server}"
    )
    for kind, f in rows:
        for example in f["error_examples"]:
            print(f"error, {kind}: {example}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def positive(text: str) -> float:
        value = float(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not a positive number")
        return value

    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--duration", type=positive, default=300.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of load before")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=0, help="for the clients' choices")
    parser.add_argument("--model", help="HF folder of the base model (default: the tiny model)")
    parser.add_argument("--max-tokens", type=int, default=16, help="per answer")
    parser.add_argument("--flip-every", type=positive, default=3.0, help="seconds between flips")
    parser.add_argument("--url", help="a ragtune already serving on loopback (default: start one)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process, for its memory")
    parser.add_argument("--rag-route", default="chat", help="with --url: a route that retrieves")
    parser.add_argument("--adapter-route", default="tuned", help="with --url: serves --alias")
    parser.add_argument("--summarize-route", default="summarize", help="with --url")
    parser.add_argument("--alias", default="tuned", help="with --url: the alias to flip")
    parser.add_argument("--out", type=Path, default=Path(".ragtune/bench/load.json"))
    args = parser.parse_args(argv)
    if args.clients < 1 or args.warmup < 0 or args.max_tokens < 1:
        parser.error("--clients and --max-tokens must be at least 1, --warmup at least 0")
    if args.url is not None:
        url = loopback_url(args.url)
        if url is None:
            parser.error(
                f"--url {args.url} is not on loopback (localhost, 127.0.0.0/8, ::1): this tool "
                "puts a sustained load on a server and flips its adapters; run it on the "
                "server's own machine"
            )
        args.url = url
        if args.pid is not None and not Path(f"/proc/{args.pid}/status").exists():
            parser.error(f"--pid {args.pid}: no such process on this machine")
    elif args.pid is not None:
        parser.error("--pid goes with --url (a server this tool starts is measured anyway)")
    args.model_name = args.model or "tiny test model"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the load; 0 when it passed, 1 with a line per failure."""
    args = parse_args(argv)
    if args.url is not None:
        target = given_server(args)
        args.model_name = "the server's"
        report = asyncio.run(run_load(target, args))
    else:
        with (
            tempfile.TemporaryDirectory(prefix="bench-load-") as tmp,
            own_server(args, Path(tmp)) as target,
        ):
            report = asyncio.run(run_load(target, args))
    failures = verdict(report)
    report["verdict"] = {"passed": not failures, "failures": failures}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"report: {args.out}")
    for failure in failures:
        print(f"FAILED: {failure}")
    if not failures:
        print("passed: no errors, memory flat" if report["memory"]["flat"] else "passed: no errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
