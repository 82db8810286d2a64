"""Serving chat and completion requests: the OpenAI request checked against the settings, sent to the LLM
deployment (or, while a canary is out, to the canary's share), answered whole or relayed as a stream with its
time to first token measured and its outcome counted for the canary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace

from serve_app.calls.handles import call, open_call
from serve_app.calls.streams import relay_stream
from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest, ModelStarting
from serve_app.ingress.context import IngressContext
from serve_app.observability.genai import llm_call, record_response
from serve_app.observability.metrics import metric
from serve_app.observability.tracing import tracer
from serve_app.protocol.stream import ErrorEvent, OutcomeChunk, is_done


class Outcome(Protocol):
    """Records a call's outcome on its side while a canary is out (CanaryRouter.record, its side given)."""

    def __call__(self, ok: bool, ttft_ms: float | None = None) -> None: ...


# OpenAI's documented range; vLLM alone would accept any non-negative temperature.
_MAX_TEMPERATURE = 2.0


def check_sampling(req: Any, settings: AppSettings) -> None:
    n = getattr(req, "n", None)
    if n is not None and not 1 <= n <= settings.ingress.max_n:
        raise InvalidRequest(f"n must be between 1 and {settings.ingress.max_n}", "n")
    t = getattr(req, "temperature", None)
    if t is not None and not 0.0 <= t <= _MAX_TEMPERATURE:
        raise InvalidRequest(f"temperature must be between 0 and {_MAX_TEMPERATURE:g}", "temperature")
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, field, None)
        if value is not None and value < 1:
            raise InvalidRequest(f"{field} must be at least 1", field)
        cap = settings.ingress.max_tokens
        if value is not None and cap is not None and value > cap:
            raise InvalidRequest(f"{field} must be at most {cap}", field)


SESSION_HEADER = "x-session-id"  # Ray Serve's own name for it (RAY_SERVE_SESSION_ID_HEADER_KEY's default)
_MAX_SESSION_CHARS = 256


def session_header(request: Request) -> str | None:
    """The ``x-session-id`` header of a request: its LLM calls go to one replica (serve_app/llm/router.py)."""
    session = request.headers.get(SESSION_HEADER)
    if session is not None and not 0 < len(session) <= _MAX_SESSION_CHARS:
        raise InvalidRequest(f"the {SESSION_HEADER} header must be 1 to {_MAX_SESSION_CHARS} characters",
                             SESSION_HEADER)
    return session


async def _observed(lines: AsyncIterator[str], tags: dict[str, str], record: Outcome | None, t0: float,
                    call_span: trace.Span) -> AsyncGenerator[str, None]:
    """Relay a stream, recording the time to its first event (TTFT), its finish and usage on the call's span,
    and, while a canary is out, its side's outcome: whether it ended with [DONE] and no error event (a client
    that leaves early records none). Only the typed lines are looked into (serve_app/protocol/stream.py): the
    others, one per token, pass untouched."""
    ttft = None
    ok = done = False
    ending: dict[str, Any] = {"choices": []}
    try:
        async for line in lines:
            if ttft is None:  # every line of the relay is an event: vLLM's, an error, [DONE]
                ttft = time.perf_counter() - t0
                metric("serve_app_llm_time_to_first_token_seconds").observe(ttft, tags=tags)
            if isinstance(line, ErrorEvent):
                ok, done = False, True
                call_span.set_status(trace.Status(trace.StatusCode.ERROR, "error event"))
            elif isinstance(line, OutcomeChunk):
                chunk = line.body
                ending.update(id=chunk.get("id"), model=chunk.get("model"), usage=chunk.get("usage"))
                ending["choices"] += [c for c in chunk.get("choices") or () if c.get("finish_reason")]
            elif not done and is_done(line):
                ok, done = True, True
            yield line
    finally:
        record_response(call_span, ending)
        call_span.end()
        if done and record is not None:
            record(ok, None if ttft is None else ttft * 1000)


def _served_by(head: dict[str, Any], model: str) -> dict[str, str]:
    # Which model's deployment and which of its replicas answered (the head's ``replica``, StreamHead): ties a
    # client's request to the replica's logs and metrics.
    headers = {"X-Served-Model": model}
    if head.get("replica"):
        headers["X-Served-By"] = str(head["replica"])
    return headers


async def _open(ctx: IngressContext, handle, kind: str, req: Any, model: str):
    """Start the call and wait for its head. A model at zero replicas is woken (one start shared by the requests
    that find it cold, serve_app/ingress/replicas.py): the request waits for the start up to
    ``ingress.cold_start_timeout_s``, then for its answer up to the request's own deadline, as any other."""
    ingress, zero = ctx.settings.ingress, ctx.models.zero
    base = ctx.models.adapters.get(model, model)
    if not zero.cold(base):
        return await open_call(handle.generate, (kind, req), ingress)
    started = zero.wake(base, partial(call, ctx.models.models[base], "health",
                                      timeout_s=max(ingress.request_timeout_s, ingress.cold_start_timeout_s)))
    # Queued at Serve at once, so it is answered as soon as the replica is up.
    opened = asyncio.ensure_future(open_call(handle.generate, (kind, req), ingress))
    try:
        await asyncio.wait_for(asyncio.shield(started), ingress.cold_start_timeout_s)
    except TimeoutError:
        if not opened.done():
            opened.cancel()  # the start goes on (``started``); this request gives up its place in the queue
            wait_s = zero.retry_after_s(base)
            raise ModelStarting(f"the model {base!r} is starting from zero replicas and did not answer within "
                                f"{ingress.cold_start_timeout_s:g}s; retry in {wait_s:.0f}s", wait_s, "model") from None
    except BaseException:
        opened.cancel()
        raise
    return await opened


@dataclass
class Answer:
    """A started model call: its whole answer (``body``), or its stream's lines relayed and observed (``lines``),
    with the headers saying which model and replica answer."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    lines: AsyncGenerator[str, None] | None = None


async def generate(ctx: IngressContext, kind: str, req: Any, model: str, handle, session: str | None = None):
    """Run a chat or completion request on ``model``'s LLM deployment: the whole answer as one JSON body, or
    the stream relayed as server-sent events."""
    answer = await start(ctx, kind, req, model, handle, session=session)
    if answer.lines is None:
        return JSONResponse(answer.body, headers=answer.headers)
    return StreamingResponse(answer.lines, media_type="text/event-stream", headers=answer.headers)


async def start(ctx: IngressContext, kind: str, req: Any, model: str, handle, route: str | None = None,
                session: str | None = None) -> Answer:
    """Start a chat or completion request on ``model``'s LLM deployment (``handle``; while a canary of that
    model is out, the canary's share of them on the canary) and wait for its head. ``route``: the public route
    it serves, for the metrics (default: the request kind's own). ``session``: the calls that share it go to
    one replica (serve_app/llm/router.py) and one side of a canary."""
    ctx.models.gate(model)
    route = route or ("/v1/chat/completions" if kind == "chat" else "/v1/completions")
    tags = {"route": route, "model": model}
    # While a canary of this model is out, a share of its requests goes to the canary's LLM and each side's
    # outcome is recorded (serve_app/ingress/canary.py).
    releases = ctx.releases
    router = releases.router_for(handle) if releases.routers else None
    record: Outcome | None = None
    if router is not None:
        arm, handle = router.pick(session)
        record = partial(router.record, arm)
        releases.canary_reporter()
    if session:
        handle = handle.options(session_id=session)
    # The model call's span (OpenTelemetry's GenAI conventions), from the call to the answer's last token.
    name, attributes = llm_call("chat" if kind == "chat" else "text_completion", model,
                                getattr(req, "max_completion_tokens", None) or req.max_tokens, req.temperature,
                                stream=bool(req.stream))
    call_span = tracer().start_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes)
    t0 = time.perf_counter()
    try:
        with trace.use_span(call_span, end_on_exit=False):
            head, gen = await _open(ctx, handle, kind, req, model)
    except BaseException as exc:  # a cancelled call (client gone) ends its span too
        call_span.record_exception(exc)
        call_span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        call_span.end()
        if record is not None and isinstance(exc, Exception):
            record(False)
        raise
    if not head.get("stream"):
        record_response(call_span, head["body"])
        call_span.end()
        if record is not None:
            record(True)
        usage = head["body"].get("usage") or {}
        for field, name in (("prompt_tokens", "serve_app_llm_prompt_tokens"),
                            ("completion_tokens", "serve_app_llm_output_tokens")):
            if usage.get(field):  # Ray's counters refuse an increment of 0
                metric(name).inc(usage[field], tags=tags)
        return Answer(_served_by(head, model), body=head["body"])
    lines = relay_stream(gen, ctx.settings.ingress.stream_idle_timeout_s)
    return Answer(_served_by(head, model), lines=_observed(lines, tags, record, t0, call_span))
