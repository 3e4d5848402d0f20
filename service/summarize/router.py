"""POST /v1/summarize: text or ingested documents, summarized in the route's format."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.auth import ApiKeyRoute
from service.chat.schemas import UsageOut
from service.deps import SummarizeDep
from service.openapi import BODY, UPSTREAM, errors
from service.summarize.schemas import SummarizedDocument, SummarizeRequest, SummarizeResponse
from service.summarize.service import SummarizeCall

# Behind the API keys when api.keys is set.
router = APIRouter(tags=["summarize"], route_class=ApiKeyRoute)


@router.post(
    "/v1/summarize",
    response_model=SummarizeResponse,
    responses=errors(401, 404, 409, *BODY, *UPSTREAM),
)
async def summarize(
    body: SummarizeRequest, service: SummarizeDep, request: Request
) -> SummarizeResponse:
    request.state.route_label = body.route
    result = await service.summarize(
        SummarizeCall(
            route=body.route,
            text=body.text,
            doc_ids=body.doc_ids,
            filters=body.filters,
            adapter=body.adapter,
            sampling=body.generation(),
        )
    )
    return SummarizeResponse(
        route=result.route,
        adapter=result.adapter,
        summary=result.text,
        output=result.output,
        output_error=result.output_error,
        finish_reason=result.finish_reason,
        documents=[
            SummarizedDocument(doc_id=d.doc_id, title=d.title, chunks=d.chunks)
            for d in result.documents
        ],
        input_tokens=result.input_tokens,
        pieces=result.pieces,
        reduce_rounds=result.reduce_rounds,
        usage=UsageOut.of(result.usage),
    )
