"""Prometheus metrics, one registry per app so that several apps (tests) never share counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds: from a cache-warm embedding to a long generation on CPU.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragtune_requests",
            "Requests answered, by endpoint, route and HTTP status",
            ["endpoint", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ragtune_request_seconds",
            "Whole-request latency (to the last byte for streams), by endpoint and route",
            ["endpoint", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "ragtune_stage_seconds",
            "Time in each stage of a request: embed, search, generate",
            ["route", "stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "ragtune_tokens",
            "Tokens in (prompt) and out (completion), by route",
            ["route", "direction"],
            registry=self.registry,
        )
        self.adapter_use = Counter(
            "ragtune_adapter_requests",
            "Generations by route and the adapter version that served them",
            ["route", "adapter"],
            registry=self.registry,
        )
        self.embed_batch = Histogram(
            "ragtune_embed_batch_size",
            "Questions embedded together in one model call (concurrent requests share one)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.errors = Counter(
            "ragtune_errors",
            "Errors returned to callers, by type",
            ["type"],
            registry=self.registry,
        )
        self.invalid_json = Counter(
            "ragtune_invalid_json_outputs",
            "Answers of JSON routes that were not the route's JSON, by route and why "
            "(cut_off by max_tokens, not_json, schema)",
            ["route", "reason"],
            registry=self.registry,
        )

        self.captured = Counter(
            "ragtune_captured",
            "Answers captured (written under <data_dir>/captures), by route",
            ["route"],
            registry=self.registry,
        )
        self.capture_dropped = Counter(
            "ragtune_capture_dropped",
            "Answers sampled for capture but not written, by route and why (queue_full: the "
            "writer is behind, capture.queue_size; write_error: the disk refused)",
            ["route", "reason"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "ragtune_feedback",
            "Feedback recorded (POST /v1/feedback), by rating",
            ["rating"],
            registry=self.registry,
        )

    @contextmanager
    def timed(self, route: str, stage: str) -> Iterator[None]:
        """Time a stage into the stage histogram, and into the request's Server-Timing
        header when it ends before the answer's headers are sent."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.stage.labels(route, stage).observe(seconds)
            timings = _stage_timings.get()
            if timings is not None:
                timings[stage] = timings.get(stage, 0.0) + seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)


# The stages timed so far in the current request (see RequestMetrics).
_stage_timings: ContextVar[dict[str, float] | None] = ContextVar("stage_timings", default=None)


def server_timing(timings: dict[str, float]) -> str:
    """A Server-Timing header value (W3C): `embed;dur=12.3, search;dur=2.1` in ms."""
    return ", ".join(f"{stage};dur={1000 * s:.1f}" for stage, s in timings.items())


class RequestMetrics:
    """Counts every request and times it to its last byte (streams included), labelled by
    endpoint and by the route a handler put in `request.state.route_label`; answers carry
    a Server-Timing header with the stages (embed, search, generate) done before it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        timings: dict[str, float] = {}
        token = _stage_timings.set(timings)

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if timings:
                    headers = [*message.get("headers", [])]
                    headers.append((b"server-timing", server_timing(timings).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, watching)
        finally:
            _stage_timings.reset(token)
            metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "other"
                label = str(scope.get("state", {}).get("route_label", ""))
                metrics.requests.labels(endpoint, label, str(status)).inc()
                metrics.latency.labels(endpoint, label).observe(time.perf_counter() - start)
