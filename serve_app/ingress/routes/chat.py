"""POST /v1/chat/completions: OpenAI's chat API, answered by the LLM deployment (serve_app/ingress/llm_serving.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from serve_app.ingress.chat_checks import check_messages, check_tools
from serve_app.ingress.context import IngressContext, api_key, context
from serve_app.ingress.limits import charge_tokens
from serve_app.ingress.llm_serving import check_sampling, generate, session_header
from serve_app.protocol.openai import ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, ctx: IngressContext = Depends(context)):
    settings = ctx.settings
    check_messages(body, settings)
    check_tools(body, settings)
    check_sampling(body, settings)
    session = session_header(request)  # checked before anything is charged
    model, handle = ctx.models.chat_model(body.model, api_key(request))
    limit = body.max_completion_tokens or body.max_tokens or settings.ingress.default_token_charge
    await charge_tokens(request, limit * (body.n or 1), "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    return await generate(ctx, "chat", body, model, handle, session)
