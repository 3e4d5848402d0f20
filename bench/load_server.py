"""The ragtune server bench.load puts its load on, and what the bench reads of it.

By default `own_server` starts one: `ragtune serve` in a subprocess on a free loopback port, a
temporary data dir, the tiny test model (or `--model`), two versions of a LoRA adapter
registered behind an alias, a small ingested corpus, a random admin token. `given_server`
takes one already running on loopback instead (`--url`, `--pid`). Read from it: its process's
memory and CPU (from /proc), the two adapter versions to flip between (its admin API), and its
own time per stage (its /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

from bench.api import Totals
from bench.generate import ADAPTERS, make_adapters
from ragtune.settings import Settings

SAMPLE_EVERY_S = 5.0


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


def progress(message: str) -> None:
    print(f"bench.load: {message}", file=sys.stderr, flush=True)


def loopback_url(url: str) -> str | None:
    """`url` without a trailing slash when it is http(s) on loopback; else None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return url.rstrip("/") if parts.scheme in ("http", "https") and local else None


def given_server(args: argparse.Namespace) -> Target:
    """The server already running at `--url`: its admin token and API key from the env."""
    token = os.environ.get("RAGTUNE_ADMIN__TOKEN")
    if not token:
        raise SystemExit("bench.load: set RAGTUNE_ADMIN__TOKEN to the server's admin token")
    return Target(
        args.url,
        args.pid,
        token,
        os.environ.get("RAGTUNE_API_KEY"),
        args.rag_route,
        args.adapter_route,
        args.summarize_route,
        args.alias,
    )


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


# -- what the bench reads of it -------------------------------------------------------------


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
    server's /metrics: its own time, where the load's latencies also hold queueing."""
    means: dict[str, dict[str, float]] = {}
    for key in sorted(k for k in after if k.endswith("_sum")):
        label = key.removesuffix("_sum")
        route, stage = label.rsplit(" ", 1)
        count = after[f"{label}_count"] - before[f"{label}_count"]
        # "request" counts only the OpenAI endpoint's requests (bench.api's reading): left out.
        if count and stage != "request":
            means.setdefault(route, {})[stage] = round(1000 * (after[key] - before[key]) / count, 1)
    return means
