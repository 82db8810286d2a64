"""The agent's bounded tool loop. Pure asyncio over injected callables (an LLM client and tool functions),
so it runs the same inside the Agent deployment and in unit tests.

Bounds: at most ``max_steps`` LLM calls; each tool call has its own deadline; the whole run has one. Each
step's call is generated under a JSON schema built from the allowed tools (vLLM's guided decoding), so the
model can only produce a parseable call to an allowed tool; the loop still checks the allow-list and the
arguments before running anything (defense in depth: a refused call is recorded as a step, never run). The
last step may only call ``final_answer``, so a run that is not cut by its deadline always ends with an answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from serve_app.agent.tools import REGISTRY, call_schema
from serve_app.config.names import FINAL
from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import AgentSettings
from serve_app.errors import AppError, unwrap
from serve_app.observability.genai import agent_run, tool_execution
from serve_app.observability.tracing import span, tracer

logger = logging.getLogger("ray.serve")


@dataclass
class ToolResult:
    output: str
    sources: list[dict[str, Any]] = field(default_factory=list)


ToolFn = Callable[[BaseModel], Awaitable[ToolResult]]


class Completer(Protocol):
    async def complete(
        self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0, json_schema: dict | None = None,
        *, session: str | None = None,
    ) -> str: ...


class AgentLoop:
    def __init__(self, llm: Completer, tools: dict[str, ToolFn], settings: AgentSettings, prompts: PromptSettings):
        missing = [t for t in settings.tools if t != FINAL and t not in tools]
        if missing:
            raise ValueError(f"no implementation for allowed tool(s) {missing}")
        self.llm, self.tools, self.s, self.p = llm, tools, settings, prompts
        self.allowed = tuple(settings.tools)
        self._schema = call_schema(self.allowed)
        self._final_schema = call_schema((FINAL,))
        tool_lines = "\n".join(self.p.agent_tool.format(name=n, description=REGISTRY[n].description) for n in self.allowed)
        self._system = self.p.agent_system.format(tools=tool_lines)

    async def run(self, task: str, max_steps: int) -> AsyncGenerator[dict[str, Any], None]:
        """Events: ``start``, one ``step`` per tool call, then ``answer`` (always last)."""
        deadline = time.monotonic() + self.s.deadline_s
        messages = [{"role": "system", "content": self._system}, {"role": "user", "content": self.p.agent_task.format(task=task)}]
        steps: list[dict[str, Any]] = []
        sources: dict[str, dict[str, Any]] = {}
        answer, reason = None, "max_steps"
        yield {"type": "start", "tools": list(self.allowed), "max_steps": max_steps}
        # Spans are started and ended explicitly: this generator yields between steps, so no span may stay
        # attached across a yield; each step's span is current only while the step runs (its LLM call and
        # tool call become its children).
        name, attributes = agent_run(max_steps=max_steps)
        run_span = tracer().start_span(name, attributes=attributes)
        try:
            # Every LLM call of the run is one session: it reaches the replica whose prefix cache holds the run's
            # growing transcript (serve_app/llm/router.py).
            session = f"agent-{uuid.uuid4().hex}"
            async with aclosing(self._steps(messages, steps, sources, deadline, max_steps, run_span,
                                            session)) as events:
                async for event in events:
                    if event["type"] == "end":
                        answer, reason = event["answer"], event["reason"]
                    else:
                        yield event
        except (GeneratorExit, asyncio.CancelledError):
            reason = "cancelled"
            raise
        except Exception as exc:
            reason = "error"
            run_span.record_exception(exc)
            run_span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            run_span.set_attribute("finish_reason", reason)
            run_span.set_attribute("steps", len(steps))
            run_span.end()
        yield {
            "type": "answer",
            "answer": answer,
            "finish_reason": reason,
            "steps": steps,
            "sources": list(sources.values()),
            "prompts_version": self.p.version,
        }

    async def _steps(self, messages, steps, sources, deadline, max_steps,
                     run_span, session: str) -> AsyncGenerator[dict[str, Any], None]:
        answer, reason = None, "max_steps"
        for i in range(max_steps):
            last = i == max_steps - 1
            if last:
                messages.append({"role": "user", "content": self.p.agent_last_step})
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "deadline"
                break
            started = time.perf_counter()
            step_span = tracer().start_span("agent.step", context=trace.set_span_in_context(run_span),
                                            attributes={"index": i, "final_only": last})
            with trace.use_span(step_span, end_on_exit=True):
                try:
                    raw = await asyncio.wait_for(
                        self.llm.complete(messages, self.s.step_max_tokens, self.s.temperature,
                                          self._final_schema if last else self._schema, session=session),
                        remaining,
                    )
                except TimeoutError:
                    step_span.set_attribute("status", "deadline")
                    reason = "deadline"
                    break
                step = await self._step(raw, deadline, sources)
                step_span.set_attribute("tool", str(step["tool"])[:64])
                step_span.set_attribute("status", step["status"])
            step["ms"] = round((time.perf_counter() - started) * 1000, 2)
            steps.append(step)
            yield {"type": "step", "index": i, **step}
            if step["tool"] == FINAL and step["status"] == "ok":
                answer, reason = step["input"]["answer"], "final_answer"
                break
            messages.append({"role": "assistant", "content": raw})
            messages.append({"role": "user", "content": self.p.agent_observation.format(tool=step["tool"], output=step["output"])})
        yield {"type": "end", "answer": answer, "reason": reason}

    async def _step(self, raw: str, deadline: float, sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
        try:
            call = json.loads(raw)
            name, args = call["tool"], call["arguments"]
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            # Only when generation stopped early (length bound): guided decoding emits valid JSON otherwise.
            return {"tool": None, "input": None, "output": "error: the output was not a complete tool call", "status": "error"}
        if name not in self.allowed:
            logger.warning("agent refused a call to %r: not in the allow-list", name[:64])
            return {"tool": name[:64], "input": args, "output": f"refused: {name[:64]!r} is not an allowed tool", "status": "refused"}
        try:
            parsed = REGISTRY[name].args.model_validate(args)
        except ValidationError as exc:
            msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return {"tool": name, "input": args, "output": f"error: invalid arguments: {msg}", "status": "error"}
        if name == FINAL:
            return {"tool": name, "input": parsed.model_dump(), "output": "done", "status": "ok"}
        timeout = min(self.s.tool_timeout_s, max(0.0, deadline - time.monotonic()))
        started = time.perf_counter()

        def ms() -> float:
            return round((time.perf_counter() - started) * 1000, 2)

        try:
            tool_name, attributes = tool_execution(name, tool=name)
            with span(tool_name, **attributes) as tool_span:
                try:
                    result = await asyncio.wait_for(self.tools[name](parsed), timeout)
                    tool_span.set_attribute("status", "ok")
                except Exception:
                    tool_span.set_attribute("status", "error")
                    raise
        except TimeoutError:
            return {"tool": name, "input": parsed.model_dump(), "output": f"error: {name} did not answer within {timeout:.3g}s",
                    "status": "error", "tool_ms": ms()}
        except Exception as exc:  # noqa: BLE001 - a failing tool is an observation; the loop goes on
            cause = unwrap(exc)  # a Ray task error: the replica's own exception
            detail = str(cause) if isinstance(cause, AppError) else type(cause).__name__
            return {"tool": name, "input": parsed.model_dump(), "output": f"error: {detail}"[:300], "status": "error",
                    "tool_ms": ms()}
        for src in result.sources:
            sources.setdefault(src.get("chunk_id") or src["document_id"], src)
        return {"tool": name, "input": parsed.model_dump(), "output": result.output[: self.s.observation_chars], "status": "ok",
                "tool_ms": ms()}
