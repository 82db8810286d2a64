"""POST /v1/agent: a bounded tool-using run of the Agent deployment, as one JSON body or as server-sent events
(its steps, then the answer)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from serve_app.calls.handles import open_call
from serve_app.calls.streams import sse_events
from serve_app.errors import NotFound, UpstreamTimeout
from serve_app.ingress.context import IngressContext, api_key, bounded, context, deadline, tenant_of
from serve_app.ingress.limits import charge_tokens
from serve_app.protocol.rag import AgentRequest, AgentResponse

router = APIRouter()


@router.post("/v1/agent", response_model=AgentResponse)
async def agent_run(body: AgentRequest, request: Request, ctx: IngressContext = Depends(context)):
    if ctx.agent is None:
        raise NotFound("the agent is disabled in this deployment (it needs the model and agent.enabled)")
    ctx.models.use_model(ctx.models.agent_model, api_key(request))
    s = ctx.settings.agent
    max_steps = bounded(body.max_steps, s.default_max_steps, s.max_steps, "max_steps")
    await charge_tokens(request, max_steps * s.step_max_tokens, "max_steps")
    ingress = ctx.settings.ingress
    # The agent enforces its own deadline; this one only guards against a lost replica.
    budget = s.deadline_s + ingress.health_timeout_s
    # The agent's tools reach the key's tenant's documents only.
    head, gen = await open_call(ctx.agent.run, (body.task, max_steps, tenant_of(request)), ingress)
    if body.stream:
        # A step is one whole LLM call, which the agent bounds only by the run's deadline: a shorter idle
        # deadline would cut healthy runs whose step is slow. Keep-alives hold the stream open meanwhile.
        idle_s = max(ingress.stream_idle_timeout_s, budget)
        lines = sse_events(_chain(head, gen, ctx.releases.release), idle_s, ingress.stream_keepalive_s)
        return StreamingResponse(lines, media_type="text/event-stream")

    async def collect() -> dict[str, Any]:
        try:
            async for event in gen:
                if event["type"] == "answer":
                    return event
        finally:
            gen.cancel()
        raise UpstreamTimeout("the agent ended without an answer")

    final = await deadline(collect(), budget, "the agent")
    return {"object": "agent.answer", **{k: v for k, v in final.items() if k != "type"}, "release": ctx.releases.release}


async def _chain(head: dict[str, Any], gen, release: str) -> AsyncGenerator[dict[str, Any], None]:
    try:
        yield head
        async for event in gen:
            yield {**event, "release": release} if event["type"] == "answer" else event
    finally:
        gen.cancel()
