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
import importlib
import ipaddress
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

from bench.api import Totals, ragtune_totals
from bench.generate import ADAPTERS, make_adapters
from bench.loadgen import Run
from ragtune.settings import Settings

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
SAMPLE_EVERY_S = 5.0
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
class Target:
    """A ragtune server on loopback and what the load asks of it."""

    url: str
    pid: int | None
    admin_token: str
    api_key: str | None
    rag_route: str
    adapter_route: str
    summarize_route: str
    alias: str


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


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def cpu_s(pid: int) -> float:
    """The process's CPU time so far (user + system), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Memory:
    pid: int | None
    points_kib: dict[str, int] = field(default_factory=dict)
    series: list[tuple[float, int]] = field(default_factory=list)

    def mark(self, name: str) -> None:
        if self.pid is not None and Path(f"/proc/{self.pid}").exists():  # gone: not sampled
            self.points_kib[name] = rss_kib(self.pid)

    async def sample(self, t0: float) -> None:
        while self.pid is not None and Path(f"/proc/{self.pid}").exists():
            self.series.append((round(time.monotonic() - t0, 1), rss_kib(self.pid)))
            await asyncio.sleep(SAMPLE_EVERY_S)

    def growth(self) -> float | None:
        """End against after warm-up, as a fraction (None when not sampled)."""
        points = self.points_kib
        if "after_warmup" not in points or "end" not in points:
            return None
        return (points["end"] - points["after_warmup"]) / points["after_warmup"]


async def version_pair(session: aiohttp.ClientSession, target: Target) -> tuple[str, str]:
    """The alias's current version and another version of the same adapter to flip to."""
    headers = {"Authorization": f"Bearer {target.admin_token}"}
    async with session.get(f"{target.url}/admin/adapters", headers=headers) as response:
        if response.status != 200:
            raise SystemExit(
                f"bench.load: GET /admin/adapters answered {response.status}: set "
                "RAGTUNE_ADMIN__TOKEN to the server's admin token"
            )
        listing = await response.json()
    alias = listing["aliases"].get(target.alias)
    if alias is None:
        raise SystemExit(f"bench.load: the server has no alias {target.alias!r}; give --alias")
    current = alias["target"]
    name = current.split("@")[0]
    others = [f"{a['name']}@{a['version']}" for a in listing["adapters"] if a["name"] == name]
    others = [ref for ref in others if ref != current]
    if not others:
        raise SystemExit(
            f"bench.load: alias {target.alias!r} points at {current} and the registry holds no "
            f"other version of {name!r} to flip to; register a second one"
        )
    return current, others[-1]


def stage_means(before: Totals, after: Totals) -> dict[str, dict[str, float]]:
    """Mean ms per stage (embed, search, generate) of each route between two readings of the
    server's /metrics: its own time, where the latencies above also hold queueing."""
    means: dict[str, dict[str, float]] = {}
    for key in sorted(k for k in after if k.endswith("_sum")):
        label = key.removesuffix("_sum")
        route, stage = label.rsplit(" ", 1)
        count = after[f"{label}_count"] - before[f"{label}_count"]
        # "request" counts only the OpenAI endpoint's requests (bench.api's reading): left out.
        if count and stage != "request":
            means.setdefault(route, {})[stage] = round(1000 * (after[key] - before[key]) / count, 1)
    return means


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


# -- the server -----------------------------------------------------------------------------


def loopback_url(url: str) -> str | None:
    """`url` without a trailing slash when it is http(s) on loopback; else None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return url.rstrip("/") if parts.scheme in ("http", "https") and local else None


def routes_yaml(alias: str) -> str:
    return f"""\
routes:
  chat:
    kind: chat
    retrieval: {{collection: docs, mode: hybrid, top_k: 3}}
    prompt: {{system: "Answer from these sources.\\n{{context}}", user: "{{question}}"}}
  {alias}:
    kind: chat
    adapter: {alias}
    prompt: {{user: "{{question}}"}}
  summarize:
    kind: summarize
    prompt: {{user: "Summarize: {{text}}", reduce: "Combine: {{text}}"}}
"""


def progress(message: str) -> None:
    print(f"bench.load: {message}", file=sys.stderr, flush=True)


def _env(values: dict[str, Any], prefix: str = "RAGTUNE_") -> dict[str, str]:
    """Nested settings as RAGTUNE_SECTION__FIELD variables."""
    env: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key.upper()}"
        if isinstance(value, dict):
            env |= _env(value, f"{name}__")
        else:
            env[name] = str(value)
    return env


@contextmanager
def own_server(args: argparse.Namespace, workdir: Path) -> Iterator[Target]:
    """`ragtune serve` in a subprocess on a fresh data dir: a small corpus ingested, two
    versions of a LoRA adapter registered behind an alias; stopped with Ctrl-C's signal."""
    from engine.vllm_cpu import free_port

    # Test fixtures, imported by name: tests/ is outside mypy's packages.
    fixtures = importlib.import_module("tests.fixtures.api")
    if args.model:
        model = str(Path(args.model).resolve())
    else:
        progress("building the tiny test model")
        tiny = importlib.import_module("tests.fixtures.tiny_model")
        model = str(tiny.build_tiny_model(workdir / "tiny"))
    args.model_name = model
    alias, token = "tuned", secrets.token_hex(16)
    data = workdir / "data"
    progress("building two LoRA adapters")
    make_adapters(model, data / "adapters" / "incoming", rank=8)
    routes = workdir / "routes.yaml"
    routes.write_text(routes_yaml(alias))
    values: dict[str, Any] = {
        "data_dir": data,
        "llm": {"model": model, "dtype": "float32"},
        "admin": {"token": token},
        "api": {"routes_file": routes},
        "adapters": {"sync_interval_s": 1.0, "drain_timeout_s": 60},
    }
    progress("ingesting a small corpus")
    fixtures.ingest_corpus(Settings(**values))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Only these settings: RAGTUNE_* variables of the caller's shell (a vLLM or Qdrant URL)
    # would point the server elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_")} | _env(values)
    command = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        progress(f"starting `ragtune serve` on {url} (its log: {log_path})")
        wait_ready(url, server, log_path)
        progress("registering the adapter's two versions behind alias " + alias)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as admin:
            for i, folder in enumerate(ADAPTERS):
                body = {"path": f"incoming/{folder}", "name": alias}
                answer = admin.post(
                    "/admin/adapters", json=body | ({"alias": alias} if i == 0 else {}), timeout=300
                )
                if answer.status_code != 201:
                    raise SystemExit(f"bench.load: registering {folder} failed: {answer.text}")
        yield Target(url, server.pid, token, None, "chat", alias, "summarize", alias)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_ready(
    url: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float = 600
) -> None:
    """Until GET /readyz answers 200; the server's log tail if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:]
    state = f"exited with {server.returncode}" if server.poll() is not None else "is not ready"
    raise SystemExit(f"bench.load: the server {state} (log {log}):\n{tail}")


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
        token = os.environ.get("RAGTUNE_ADMIN__TOKEN")
        if not token:
            raise SystemExit("bench.load: set RAGTUNE_ADMIN__TOKEN to the server's admin token")
        target = Target(
            args.url,
            args.pid,
            token,
            os.environ.get("RAGTUNE_API_KEY"),
            args.rag_route,
            args.adapter_route,
            args.summarize_route,
            args.alias,
        )
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
