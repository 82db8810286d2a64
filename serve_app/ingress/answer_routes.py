"""RAG and agent routes: thin — validate against the settings, run the plan or call the Agent deployment,
answer as one JSON body or as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from serve_app.calls.handles import open_call
from serve_app.calls.streams import sse_events
from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest, NotFound, UpstreamTimeout
from serve_app.ingress.fastapi_app import app
from serve_app.ingress.limits import charge_tokens
from serve_app.protocol.rag import AgentRequest, AgentResponse, RagRequest, RagResponse
from serve_app.rag.pipeline import RagPipeline


def _bounded(value: int | None, default: int, limit: int, param: str) -> int:
    value = default if value is None else value
    if not 1 <= value <= limit:
        raise InvalidRequest(f"{param} must be between 1 and {limit}", param)
    return value


class AnswerRoutes:
    """Mixed into the Ingress deployment, which provides ``self.rag``, ``self.agent``, ``self.settings``."""

    rag: RagPipeline | None
    agent: Any
    settings: AppSettings
    release: str

    async def _deadline(self, coro, seconds: float, what: str):
        try:
            return await asyncio.wait_for(coro, seconds)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{what} did not finish within {seconds:g}s") from None

    @app.post("/v1/rag", response_model=RagResponse)
    async def rag_answer(self, body: RagRequest, request: Request):
        if self.rag is None:
            raise NotFound("RAG is disabled in this deployment (it needs the model and rag.enabled)")
        self._llm_gate()
        s = self.settings.rag
        top_k = _bounded(body.top_k, s.default_top_k, s.max_top_k, "top_k")
        max_tokens = _bounded(body.max_tokens, s.answer_max_tokens, s.answer_max_tokens, "max_tokens")
        charge_tokens(request, max_tokens + (s.draft_max_tokens if s.draft else 0))
        if not body.stream:
            async def whole() -> dict[str, Any]:
                prep = await self.rag.prepare(body.question, top_k, body.filter, body.plan)
                return await self.rag.answer(prep, max_tokens)

            out = await self._deadline(whole(), s.timeout_s, "the RAG answer")
            return {"object": "rag.answer", **out, "plan": body.plan, "release": self.release}

        async def first() -> AsyncIterator[dict[str, Any]]:
            # Everything up to the first answer token happens before the response starts, so a failure
            # there still gets its own status code instead of an in-band error.
            prep = await self.rag.prepare(body.question, top_k, body.filter, body.plan)
            return await self.rag.open_stream(prep, max_tokens)

        events = await self._deadline(first(), s.timeout_s, "the RAG answer")
        return StreamingResponse(sse_events(self._tag(events, body.plan)), media_type="text/event-stream")

    async def _tag(self, events: AsyncIterator[dict[str, Any]], plan: str) -> AsyncIterator[dict[str, Any]]:
        try:
            async for e in events:
                if e["type"] == "done":
                    e = {**e, "plan": plan, "release": self.release}
                yield e
        finally:
            await events.aclose()

    @app.post("/v1/agent", response_model=AgentResponse)
    async def agent_run(self, body: AgentRequest, request: Request):
        if self.agent is None:
            raise NotFound("the agent is disabled in this deployment (it needs the model and agent.enabled)")
        self._llm_gate()
        s = self.settings.agent
        max_steps = _bounded(body.max_steps, s.default_max_steps, s.max_steps, "max_steps")
        charge_tokens(request, max_steps * s.step_max_tokens, "max_steps")
        # The agent enforces its own deadline; this one only guards against a lost replica.
        budget = s.deadline_s + self.settings.ingress.health_timeout_s
        head, gen = await open_call(self.agent.run, (body.task, max_steps), self.settings.ingress)
        if body.stream:
            return StreamingResponse(sse_events(_chain(head, gen, self.release)), media_type="text/event-stream")

        async def collect() -> dict[str, Any]:
            try:
                async for event in gen:
                    if event["type"] == "answer":
                        return event
            finally:
                gen.cancel()
            raise UpstreamTimeout("the agent ended without an answer")

        final = await self._deadline(collect(), budget, "the agent")
        return {"object": "agent.answer", **{k: v for k, v in final.items() if k != "type"}, "release": self.release}


async def _chain(head: dict[str, Any], gen, release: str) -> AsyncIterator[dict[str, Any]]:
    try:
        yield head
        async for event in gen:
            yield {**event, "release": release} if event["type"] == "answer" else event
    finally:
        gen.cancel()
