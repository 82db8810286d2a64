"""POST /tokenize and POST /detokenize, as `vllm serve` has them: a prompt or chat messages (rendered by the
model's chat template, tools included) to the model's token ids, and token ids back to text. Answered by the
named model's LLM deployment with vLLM's own tokenization layer; the model, API key and limits as for chat."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from serve_app.calls.handles import call
from serve_app.ingress.chat_checks import check_messages, check_tools
from serve_app.ingress.context import IngressContext, api_key, context
from serve_app.protocol.openai import DetokenizeRequest, TokenizeRequest

router = APIRouter()


async def _run(ctx: IngressContext, request: Request, kind: str, body):
    model, handle = ctx.models.chat_model(body.model, api_key(request))
    ctx.models.gate(model)
    return await call(handle, "tokens", kind, body, timeout_s=ctx.settings.ingress.request_timeout_s)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request, ctx: IngressContext = Depends(context)):
    if getattr(body, "messages", None) is not None:  # chat messages (else a prompt)
        check_messages(body, ctx.settings)
        check_tools(body, ctx.settings)
    return await _run(ctx, request, "tokenize", body)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request, ctx: IngressContext = Depends(context)):
    return await _run(ctx, request, "detokenize", body)
