"""Small accessors for what the lifespan built, as `Annotated` dependencies: each endpoint
asks for the pieces it uses, not for the whole state.

Async on purpose: FastAPI runs plain `def` dependencies in its thread pool, a thread hop per
request for a dictionary lookup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from engine.pool import BackendPool
from ragtune.settings import Settings
from service.admin.service import AdminService
from service.chat.service import ChatService
from service.feedback.service import FeedbackService
from service.metrics import Metrics
from service.rag.retrieval import RetrievalService
from service.routes.schemas import RouteSpec
from service.state import AppState
from service.summarize.service import SummarizeService


def state_of(request: Request) -> AppState:
    """What the lifespan built, for code that runs before dependencies do (route classes
    that check credentials before the body is read)."""
    state: AppState = request.state.services
    return state


async def get_settings(request: Request) -> Settings:
    return state_of(request).settings


async def get_routes(request: Request) -> Mapping[str, RouteSpec]:
    return state_of(request).routes


async def get_metrics(request: Request) -> Metrics:
    return state_of(request).metrics


async def get_retrieval(request: Request) -> RetrievalService:
    return state_of(request).retrieval


async def get_backend(request: Request) -> BackendPool:
    return state_of(request).backend


async def get_chat(request: Request) -> ChatService:
    return state_of(request).chat


async def get_summarize(request: Request) -> SummarizeService:
    return state_of(request).summarize


async def get_feedback(request: Request) -> FeedbackService:
    return state_of(request).feedback


async def get_admin(request: Request) -> AdminService:
    return state_of(request).admin


SettingsDep = Annotated[Settings, Depends(get_settings)]
RoutesDep = Annotated[Mapping[str, RouteSpec], Depends(get_routes)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RetrievalDep = Annotated[RetrievalService, Depends(get_retrieval)]
BackendDep = Annotated[BackendPool, Depends(get_backend)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
SummarizeDep = Annotated[SummarizeService, Depends(get_summarize)]
AdminDep = Annotated[AdminService, Depends(get_admin)]
FeedbackDep = Annotated[FeedbackService, Depends(get_feedback)]
