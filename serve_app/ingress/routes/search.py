"""POST /v1/search: the top_k chunks nearest to a query among the API key's tenant's documents, optionally
filtered by metadata."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from serve_app.errors import InvalidRequest
from serve_app.ingress.context import IngressContext, context, tenant_of
from serve_app.protocol.retrieval import SearchRequest, SearchResponse
from serve_app.vector.limits import check_filter

router = APIRouter()


@router.post("/v1/search", response_model=SearchResponse)
async def search(body: SearchRequest, request: Request, ctx: IngressContext = Depends(context)):
    s = ctx.settings.vector
    if not 1 <= body.top_k <= s.max_top_k:
        raise InvalidRequest(f"top_k must be between 1 and {s.max_top_k}", "top_k")
    check_filter(body.filter, s)
    # A threshold is a cosine similarity: a request with one and no mode is searched dense (as before modes
    # existed); one that names another mode is refused.
    if body.score_threshold is not None and body.mode not in (None, "dense"):
        raise InvalidRequest("score_threshold is a cosine similarity: it applies to dense search only "
                             "(set mode to dense, or leave score_threshold out)", "score_threshold")
    hits = await ctx.retrieval.call("search", body.query, body.top_k, body.filter, body.score_threshold, body.mode,
                                    tenant=tenant_of(request))
    return SearchResponse(results=hits)
