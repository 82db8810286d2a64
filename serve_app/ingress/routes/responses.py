"""The Responses API: POST /v1/responses (whole or streamed), GET and DELETE /v1/responses/{id}, GET
/v1/responses/{id}/input_items. Served by serve_app/ingress/responses.py; every stored response is its API
key's tenant's."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from serve_app.ingress.context import IngressContext, context, tenant_of
from serve_app.ingress.responses import Responses, page
from serve_app.protocol.responses import ID_PATTERN, ResponseCreate

router = APIRouter()

ResponseId = Annotated[str, Path(pattern=ID_PATTERN)]


@router.post("/v1/responses")
async def create_response(body: ResponseCreate, request: Request, ctx: IngressContext = Depends(context)):
    return await Responses(ctx).create(request, body)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: ResponseId, request: Request, ctx: IngressContext = Depends(context)):
    response, _ = await Responses(ctx).stored(tenant_of(request), response_id)
    return response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: ResponseId, request: Request, ctx: IngressContext = Depends(context)):
    return await Responses(ctx).delete(tenant_of(request), response_id)


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(response_id: ResponseId, request: Request, after: str | None = None,
                      limit: int = Query(default=20, ge=1, le=100), order: Literal["asc", "desc"] = "desc",
                      ctx: IngressContext = Depends(context)):
    _, items = await Responses(ctx).stored(tenant_of(request), response_id)
    return page(items, after, limit, order)
