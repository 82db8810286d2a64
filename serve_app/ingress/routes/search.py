"""POST /v1/search: the top_k chunks nearest to a query in the vector tier, optionally filtered by metadata."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from serve_app.errors import InvalidRequest
from serve_app.ingress.context import IngressContext, context
from serve_app.protocol.retrieval import SearchRequest, SearchResponse
from serve_app.vector.limits import check_filter

router = APIRouter()


@router.post("/v1/search", response_model=SearchResponse)
async def search(body: SearchRequest, ctx: IngressContext = Depends(context)):
    s = ctx.settings.vector
    if not 1 <= body.top_k <= s.max_top_k:
        raise InvalidRequest(f"top_k must be between 1 and {s.max_top_k}", "top_k")
    check_filter(body.filter, s)
    hits = await ctx.vector_call("search", body.query, body.top_k, body.filter, body.score_threshold)
    return {"object": "search.result", "results": hits}
