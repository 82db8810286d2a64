"""POST /v1/completions: OpenAI's (legacy) completions API, answered by the LLM deployment."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from serve_app.errors import InvalidRequest
from serve_app.ingress.context import IngressContext, api_key, context
from serve_app.ingress.limits import charge_tokens
from serve_app.ingress.llm_serving import check_sampling, generate, session_header
from serve_app.protocol.openai import CompletionRequest

router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, ctx: IngressContext = Depends(context)):
    if body.prompt is None or body.prompt == "" or body.prompt == []:
        raise InvalidRequest("prompt must not be empty", "prompt")
    check_sampling(body, ctx.settings)
    session = session_header(request)  # checked before anything is charged
    model, handle = ctx.models.chat_model(body.model, api_key(request))
    # One charge per prompt of a batch (a list of strings); a list of token ids is one prompt.
    prompts = len(body.prompt) if isinstance(body.prompt, list) and body.prompt and not isinstance(body.prompt[0], int) else 1
    await charge_tokens(request, (body.max_tokens or ctx.settings.ingress.default_token_charge) * (body.n or 1) * prompts)
    return await generate(ctx, "completion", body, model, handle, session)
