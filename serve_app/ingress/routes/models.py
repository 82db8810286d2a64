"""GET /v1/models: the models the LLM deployment serves, as vLLM lists them."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve_app.calls.handles import call
from serve_app.ingress.context import IngressContext, context

router = APIRouter()


@router.get("/v1/models")
async def models(ctx: IngressContext = Depends(context)):
    return JSONResponse(await call(ctx.require_llm(), "models"))
