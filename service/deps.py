"""Small accessors for what the lifespan built, as `Annotated` dependencies.

Async on purpose: FastAPI runs plain `def` dependencies in its thread pool, a thread hop per
request for a dictionary lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.chat.service import ChatService
from service.state import AppState
from service.summarize.service import SummarizeService


def state_of(request: Request) -> AppState:
    """What the lifespan built, from a request (for code that is not a dependency)."""
    state: AppState = request.state.services
    return state


async def get_state(request: Request) -> AppState:
    return state_of(request)


async def get_chat(request: Request) -> ChatService:
    state: AppState = request.state.services
    return state.chat


async def get_summarize(request: Request) -> SummarizeService:
    state: AppState = request.state.services
    return state.summarize


StateDep = Annotated[AppState, Depends(get_state)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
SummarizeDep = Annotated[SummarizeService, Depends(get_summarize)]
