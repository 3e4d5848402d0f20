"""Small accessors for what the lifespan built, as `Annotated` dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.chat.service import ChatService
from service.state import AppState
from service.summarize.service import SummarizeService


def get_state(request: Request) -> AppState:
    state: AppState = request.state.services
    return state


def get_chat(request: Request) -> ChatService:
    return get_state(request).chat


def get_summarize(request: Request) -> SummarizeService:
    return get_state(request).summarize


StateDep = Annotated[AppState, Depends(get_state)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
SummarizeDep = Annotated[SummarizeService, Depends(get_summarize)]
