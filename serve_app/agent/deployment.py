"""The Agent Serve deployment: runs the bounded tool loop, calling the LLM and the vector tier through
their handles. ``run`` is a streaming method (events: start, step…, answer) so the ingress can relay steps
as they happen or collect them into one response; cancelling the call (client gone) cancels the step in
flight, which aborts its engine request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.agent.calculator import calculate
from serve_app.agent.loop import AgentLoop, ToolResult
from serve_app.agent.tools import REGISTRY
from serve_app.calls.handles import call, handle_of
from serve_app.config.components import AgentAppSettings
from serve_app.config.names import AGENT, VECTOR_STORE
from serve_app.errors import NotFound
from serve_app.llm.client import LLMClient
from serve_app.observability.metrics import metric
from serve_app.protocol.retrieval import SearchHit

logger = logging.getLogger("ray.serve")


class Tools:
    """Implementations of the registry's tools over the vector tier's handle. Each handle call carries the tool
    deadline (``timeout_s``) itself, as every handle call does; the loop bounds the whole tool by it too."""

    def __init__(self, vector: DeploymentHandle | None, observation_chars: int, timeout_s: float, tenant: str):
        self.vector = vector
        self.chars = observation_chars
        self.timeout_s = timeout_s
        self.tenant = tenant  # the run's API key's: every tool reaches that tenant's documents only

    def _store(self) -> DeploymentHandle:
        if self.vector is None:
            raise NotFound("the document store is disabled in this deployment")
        return self.vector

    async def search_documents(self, args) -> ToolResult:
        hits: list[SearchHit] = await call(self._store(), "search", args.query, args.top_k, None, None,
                                           tenant=self.tenant, timeout_s=self.timeout_s)
        if not hits:
            return ToolResult("no matching passages")
        per_hit = max(80, self.chars // len(hits))
        lines = [f"[{h.document_id}] {h.text[:per_hit]}" for h in hits]
        sources = [{"document_id": h.document_id, "chunk_id": h.chunk_id, "score": h.score} for h in hits]
        return ToolResult("\n".join(lines), sources)

    async def get_document(self, args) -> ToolResult:
        doc = await call(self._store(), "get_document", args.document_id, tenant=self.tenant,
                         timeout_s=self.timeout_s)
        return ToolResult(doc["text"], [{"document_id": doc["id"], "chunk_id": None, "score": None}])

    async def calculator(self, args) -> ToolResult:
        return ToolResult(str(calculate(args.expression)))

    async def delete_document(self, args) -> ToolResult:
        out = await call(self._store(), "delete_document", args.document_id, tenant=self.tenant,
                         timeout_s=self.timeout_s)
        return ToolResult(f"deleted {out['id']} ({out['chunks']} chunks)")

    def bound(self, names) -> dict[str, Any]:
        return {n: getattr(self, n) for n in names if n != "final_answer"}


@serve.deployment(name=AGENT, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0})
class AgentServer:
    def __init__(self, settings: dict[str, Any]):
        """``settings``: its application's args (``AgentAppSettings``), which name the applications of its
        model and of retrieval; it reaches them by handle."""
        s = self.settings = AgentAppSettings.model_validate(settings)
        self.client = LLMClient(handle_of(s.llm_deployment, s.llm_app), s.model.name, s.ingress)
        self.vector = handle_of(VECTOR_STORE, s.retrieval_app) if s.retrieval_app else None

    def loop(self, tenant: str) -> AgentLoop:
        """A run's loop, its tools bound to the tenant (cheap: the prompt and the call schema)."""
        s = self.settings
        tools = Tools(self.vector, s.agent.observation_chars, s.agent.tool_timeout_s, tenant).bound(s.agent.tools)
        return AgentLoop(self.client, tools, s.agent, s.prompts)

    async def run(self, task: str, max_steps: int, tenant: str) -> AsyncGenerator[dict[str, Any], None]:
        outcome = "error"
        try:
            async for event in self.loop(tenant).run(task, max_steps):
                _observe(event)
                if event["type"] == "answer":
                    outcome = event["finish_reason"]
                yield event
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"  # the client went away
            raise
        finally:
            metric("serve_app_agent_runs").inc(tags={"outcome": outcome if outcome in _OUTCOMES else "error"})

    def health(self) -> dict[str, Any]:
        return {"tools": list(self.settings.agent.tools), "prompts_version": self.settings.prompts.version,
                "pid": os.getpid()}


_OUTCOMES = {"final_answer", "max_steps", "deadline", "cancelled", "error"}


def _observe(event: dict[str, Any]) -> None:
    # Label values stay bounded: a tool the model made up is "unknown", never its name.
    if event["type"] == "step":
        tool = event["tool"] if event["tool"] in REGISTRY else "unknown"
        if "tool_ms" in event:
            metric("serve_app_agent_tool_duration_seconds").observe(event["tool_ms"] / 1000, tags={"tool": tool})
        if event["status"] != "ok":
            metric("serve_app_agent_tool_errors").inc(tags={"tool": tool, "status": event["status"]})
    elif event["type"] == "answer":
        metric("serve_app_agent_steps").observe(len(event["steps"]))
