"""The FastAPI application: `create_app(settings)` builds it, its lifespan builds the clients."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from adapters.audit import AuditLog
from adapters.registry import Registry
from adapters.validate import ModelSpec
from engine.backend import Backend
from engine.factory import build_backends
from engine.pool import BackendPool
from engine.tokens import TokenCounter
from ingest.embedder import Embedder
from ingest.sparse import SparseEncoder
from ingest.store import open_store
from ragtune.errors import RagtuneError
from ragtune.settings import Settings
from service.admin.gate import GateServices, SuiteGate
from service.admin.service import AdminService
from service.capture import Capture
from service.chat.service import ChatService
from service.errors import install_error_handlers
from service.feedback.service import FeedbackService
from service.heap import frozen_startup_heap
from service.hotswap.manager import AdapterManager
from service.journal import Journal
from service.limits import RequestLimits
from service.metrics import Metrics, RequestMetrics
from service.rag.retrieval import RetrievalService
from service.routes.loader import load_served_routes
from service.state import AppState
from service.summarize.service import SummarizeService
from service.workers import Workers, run_on

log = logging.getLogger(__name__)
BackendFactory = Callable[[Settings], Sequence[Backend]]
ADMIN_PREFIX = "/admin"


def create_app(
    settings: Settings,
    backends: BackendFactory = build_backends,
    suite_gate: SuiteGate | None = None,
) -> FastAPI:
    """The API for `settings`. A bad routes file, or one that does not fit the settings,
    fails here, before anything is loaded; `backends` builds the generation engines (tests
    pass a scripted one); `suite_gate` runs eval suites for gated alias flips (without one,
    the admin API refuses `require_suite`)."""
    routes = load_served_routes(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        state = await _build(settings, routes, backends, suite_gate)
        app.state.metrics = state.metrics
        await state.adapters.start()
        try:
            with frozen_startup_heap():
                yield {"services": state}
        finally:
            await state.adapters.stop()
            await state.backend.aclose()
            # Requests are over: what they captured is written before the process ends.
            await asyncio.to_thread(state.journal.close)
            workers = state.retrieval.workers
            await run_on(workers.store, state.store.close)
            await workers.shutdown()

    app = FastAPI(
        title="ragtune",
        version="0.1.0",
        summary="RAG and LoRA adapters per route, OpenAI-compatible.",
        lifespan=lifespan,
    )
    install_error_handlers(app, settings.api.retry_after_s)
    app.add_middleware(RequestMetrics)
    app.add_middleware(
        RequestLimits,
        max_bytes=settings.api.max_body_bytes,
        body_timeout_s=settings.api.body_timeout_s,
        max_json_depth=settings.api.max_json_depth,
        exempt={f"{ADMIN_PREFIX}/adapters/upload": settings.admin.max_upload_bytes},
    )
    if settings.api.cors_origins:
        _allow_cors(app, settings.api.cors_origins)
    from service.chat.router import router as chat_router
    from service.feedback.router import router as feedback_router
    from service.health.router import router as health_router
    from service.openai_api.router import router as openai_router
    from service.summarize.router import router as summarize_router

    # Matched in this order: the endpoints called most first (each router passed costs a
    # request 5-10 us; /v1/chat/completions last was 6% of the app's own CPU per request).
    app.include_router(openai_router)
    app.include_router(chat_router)
    app.include_router(summarize_router)
    app.include_router(feedback_router)
    app.include_router(health_router)
    if settings.admin.token is not None:
        from service.admin.router import router as admin_router

        app.include_router(admin_router, prefix=ADMIN_PREFIX)
    if settings.api.keys:
        from service.auth import document_api_keys

        document_api_keys(app, [chat_router, summarize_router, openai_router, feedback_router])
    return app


def _allow_cors(app: FastAPI, origins: list[str]) -> None:
    """CORS for the listed origins only (outermost, so preflights and refusals carry it).
    Never with credentials: keys travel in the Authorization header, which a page sets itself;
    cookies never authenticate here, so no origin is given a way to spend a user's."""
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=False,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["authorization", "content-type"],
        expose_headers=["retry-after"],
        max_age=600,
    )


async def _build(
    settings: Settings,
    routes: dict[str, Any],
    backends: BackendFactory,
    suite_gate: SuiteGate | None = None,
) -> AppState:
    metrics = Metrics()
    # One after the other: transformers' model loading patches torch globally (meta-device
    # initialisation), so two loads in parallel threads corrupt each other.
    embedder = await asyncio.to_thread(
        functools.partial(Embedder.load, settings.embedding, serving=True)
    )
    members = await asyncio.to_thread(backends, settings)
    counter = await asyncio.to_thread(TokenCounter.for_settings, settings)
    pool = BackendPool(members)
    # The embedded store replays its write-ahead log when it opens: off the loop.
    store = await asyncio.to_thread(open_store, settings)
    workers = Workers.start(embedded_store=store.in_process)
    retrieval = RetrievalService(
        settings, store, embedder, SparseEncoder(settings.sparse), metrics, workers
    )
    root = settings.adapters_root()
    registry = Registry(
        root,
        await asyncio.to_thread(_model_spec, settings),
        max_rank=settings.llm.max_lora_rank,
        max_bytes=settings.adapters.max_adapter_bytes,
    )
    manager = AdapterManager(
        registry,
        pool,
        sync_interval_s=settings.adapters.sync_interval_s,
        drain_timeout_s=settings.adapters.drain_timeout_s,
    )
    journal = Journal(settings.capture.queue_size)
    journal.start()
    capture = Capture(settings.data_dir, journal, metrics)
    chat = ChatService(
        routes, retrieval, pool, manager, counter, metrics, settings.api, capture=capture
    )
    summarize = SummarizeService(routes, retrieval, pool, manager, counter, metrics, settings.api)
    audit = AuditLog(root / "audit.jsonl")
    gate = (suite_gate, GateServices(settings, routes, manager, chat)) if suite_gate else None
    return AppState(
        settings=settings,
        routes=routes,
        metrics=metrics,
        store=store,
        retrieval=retrieval,
        backend=pool,
        registry=registry,
        adapters=manager,
        audit=audit,
        chat=chat,
        summarize=summarize,
        admin=AdminService(registry, manager, audit, routes, gate, retrieval),
        journal=journal,
        feedback=FeedbackService(
            settings.data_dir, journal, metrics, routes, settings.api.request_timeout_s
        ),
    )


def _model_spec(settings: Settings) -> ModelSpec | None:
    """The served base model's shapes, to validate adapters against; None if not on disk."""
    from engine.model import resolve_base_model

    try:
        return ModelSpec.from_model_dir(Path(resolve_base_model(settings)))
    except RagtuneError as exc:
        log.warning("adapters cannot be validated against the base model: %s", exc)
        return None
