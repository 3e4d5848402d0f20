"""Everything the API builds once at start-up and closes at shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.audit import AuditLog
from adapters.registry import Registry
from engine.pool import BackendPool
from ingest.backends.base import VectorStore
from ragtune.settings import Settings
from service.admin.service import AdminService
from service.chat.service import ChatService
from service.feedback.service import FeedbackService
from service.hotswap.manager import AdapterManager
from service.journal import Journal
from service.metrics import Metrics
from service.rag.retrieval import RetrievalService
from service.routes.schemas import RouteSpec
from service.summarize.service import SummarizeService


@dataclass
class AppState:
    settings: Settings
    routes: dict[str, RouteSpec]
    metrics: Metrics
    store: VectorStore
    retrieval: RetrievalService
    backend: BackendPool
    registry: Registry
    adapters: AdapterManager
    audit: AuditLog
    chat: ChatService
    summarize: SummarizeService
    admin: AdminService
    # Captured answers' and feedback's writer thread: drained at shutdown.
    journal: Journal
    feedback: FeedbackService
