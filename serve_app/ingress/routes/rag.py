"""POST /v1/rag: a cited answer from the documents (serve_app/rag/pipeline.py plans it), as one JSON body or
as server-sent events (sources, then tokens, then timings)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from serve_app.calls.streams import sse_events
from serve_app.errors import InvalidRequest, NotFound
from serve_app.ingress.context import IngressContext, api_key, bounded, context, deadline, tenant_of
from serve_app.ingress.limits import charge_tokens
from serve_app.protocol.rag import RagRequest, RagResponse

router = APIRouter()


@router.post("/v1/rag", response_model=RagResponse)
async def rag_answer(body: RagRequest, request: Request, ctx: IngressContext = Depends(context)):
    rag = ctx.rag
    if rag is None:
        raise NotFound("RAG is disabled in this deployment (it needs the model and rag.enabled)")
    ctx.models.use_model(ctx.models.rag_model, api_key(request))
    s = ctx.settings.rag
    top_k = bounded(body.top_k, s.default_top_k, s.max_top_k, "top_k")
    max_tokens = bounded(body.max_tokens, s.answer_max_tokens, s.answer_max_tokens, "max_tokens")
    # The benchmark options (protocol/rag.py), passed to the engine only when set.
    if body.min_tokens is not None and body.min_tokens > max_tokens:
        raise InvalidRequest(f"min_tokens must be at most max_tokens ({max_tokens})", "min_tokens")
    await charge_tokens(request, max_tokens)
    tenant = tenant_of(request)  # the key's documents only
    options: dict[str, Any] = {k: v for k, v in (("min_tokens", body.min_tokens), ("ignore_eos", body.ignore_eos))
                               if v}
    if not body.stream:
        async def whole() -> dict[str, Any]:
            prep = await rag.prepare(body.question, top_k, body.filter, body.mode, tenant)
            return await rag.answer(prep, max_tokens, **options)

        out = await deadline(whole(), s.timeout_s, "the RAG answer")
        return {"object": "rag.answer", **out, "release": ctx.releases.release}

    async def first() -> AsyncGenerator[dict[str, Any], None]:
        # Everything up to the first answer token happens before the response starts, so a failure
        # there still gets its own status code instead of an in-band error.
        prep = await rag.prepare(body.question, top_k, body.filter, body.mode, tenant)
        return await rag.open_stream(prep, max_tokens, **options)

    events = await deadline(first(), s.timeout_s, "the RAG answer")
    ingress = ctx.settings.ingress
    lines = sse_events(_tag(events, ctx.releases.release), ingress.stream_idle_timeout_s, ingress.stream_keepalive_s)
    return StreamingResponse(lines, media_type="text/event-stream")


async def _tag(events: AsyncGenerator[dict[str, Any], None], release: str) -> AsyncGenerator[dict[str, Any], None]:
    try:
        async for e in events:
            if e["type"] == "done":
                e = {**e, "release": release}
            yield e
    finally:
        await events.aclose()
