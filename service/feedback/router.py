"""POST /v1/feedback: what a user thought of an answer, as training data."""

from __future__ import annotations

from fastapi import APIRouter

from service.auth import ApiKeyRoute
from service.deps import FeedbackDep
from service.feedback.schemas import FeedbackRequest, FeedbackResponse
from service.openapi import BODY, errors

# Behind the API keys when api.keys is set, as the answers it rates are.
router = APIRouter(tags=["feedback"], route_class=ApiKeyRoute)


@router.post("/v1/feedback", response_model=FeedbackResponse, responses=errors(401, *BODY, 503))
async def feedback(body: FeedbackRequest, service: FeedbackDep) -> FeedbackResponse:
    await service.record(body)
    return FeedbackResponse(id=body.id)
