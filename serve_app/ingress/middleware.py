"""ASGI middleware of the ingress app.

Order (outermost first), and why:
1. Serve's proxy (outside this app) assigns the request id: it takes ``X-Request-Id`` from the request or
   generates one, echoes it on the response and puts it into every Serve log line of the request.
2. ``TracingMiddleware`` opens the request's span (a no-op unless tracing is on) and returns its trace id in
   ``X-Trace-Id``.
3. ``MetricsMiddleware`` counts and times every answer, refusals included (route template, status), and writes
   one access-log line per request (JSON with Serve's ``logging_config``: request id, release, route template,
   status, latency; never the prompt or the answer).
4. ``AuthMiddleware``, when API keys are configured, refuses requests without a known key (401) and requests
   over the key's request rate (429), before the body is read.
5. ``BodyLimitMiddleware`` refuses an oversized body before anything reads or parses it.
6. FastAPI's exception middleware turns every exception into the error body (``ingress.errors``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from starlette.exceptions import HTTPException
from serve_app.errors import error_body

logger = logging.getLogger("ray.serve")


async def _refuse(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 for bodies over the limit: early from Content-Length, else while the body streams in.

    The limit is read from ``app.state.max_body_bytes`` (set by the Ingress replica from its settings), so
    the module-level FastAPI app can carry the middleware before any settings exist.
    """

    def __init__(self, app: ASGIApp, default_max_bytes: int = 4 * 1024 * 1024):
        self.app = app
        self.default_max_bytes = default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = getattr(scope.get("app"), "state", None)
        max_bytes = getattr(state, "max_body_bytes", None) or self.default_max_bytes
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await _refuse(send, 413, f"request body is larger than {max_bytes} bytes")
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    # Raised into whoever reads the body. An HTTPException, because FastAPI's body parsing
                    # re-raises those but turns anything else into a generic 400.
                    raise HTTPException(413, f"request body is larger than {max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method(scope: Scope) -> str:
    # A label value: any other token a client sends is "OTHER", never the token itself.
    method = scope.get("method", "")
    return method if method in _METHODS else "OTHER"


class MetricsMiddleware:
    """Requests by route template, method and status, and their duration to the last byte sent (so a
    stream is timed to its end). The label is the matched route's template (``/v1/documents/{document_id:path}``),
    never the raw path; requests that match no route count as ``unmatched``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from serve_app.observability.metrics import metric
        from serve_app.observability.tracing import trace_id

        started = time.perf_counter()
        status = 500
        responded = recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = _method(scope)
            elapsed = time.perf_counter() - started
            metric("serve_app_http_requests").inc(tags={"route": template, "method": method, "status": str(status)})
            metric("serve_app_http_request_duration_seconds").observe(elapsed, tags={"route": template, "method": method})
            state = getattr(scope.get("app"), "state", None)
            # Serve's log filter adds request_id, application, deployment and replica to every line.
            logger.info("%s %s %s %.1fms", method, template, status, elapsed * 1000, extra={
                "http_method": method, "http_route": template, "status_code": status,
                "latency_ms": round(elapsed * 1000, 2), "release": getattr(state, "release", None),
                "trace_id": trace_id()})

        async def timed_send(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record()

        try:
            await self.app(scope, receive, timed_send)
        except asyncio.CancelledError:
            if not responded:
                status = 499  # the client left before an answer started (nginx's "client closed request")
            raise
        finally:
            # An exception nothing turned into a response (Starlette answers 500), a client gone before the
            # answer (499), or a client gone mid-stream (counted with the status already sent).
            record()


class TracingMiddleware:
    """The request's server span, current for everything the request does (so handle calls carry it to the
    other deployments), named after the route template once routing is done; its trace id goes back in
    ``X-Trace-Id``. With tracing off the span is a no-op and no header is added."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from serve_app.observability.tracing import TRACE_HEADER, trace_id, tracer

        method = _method(scope)
        with tracer().start_as_current_span(f"{method}", kind=SpanKind.SERVER) as span:
            # Only a sampled trace is exported: only its id is worth handing out.
            tid = trace_id(span) if span.get_span_context().trace_flags.sampled else None
            status = 500

            async def traced_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if tid is not None:
                        message = {**message, "headers": [*message.get("headers", []), (TRACE_HEADER.encode(), tid.encode())]}
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))


OPEN_PATHS = frozenset({"/healthz", "/livez"})


def bearer(headers) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class AuthMiddleware:
    """API keys of the public API (off unless ``app.state.api_keys`` holds keys; see ingress/limits.py).

    Every route but ``/healthz`` and ``/livez`` then needs ``Authorization: Bearer <key>`` of a known key;
    ``/admin/*`` has its own check (the admin key, or an API key with the admin scope): ``app.state.admin_gate``,
    set by the Ingress, runs here too, so an unauthorized admin call is refused before its body is read or
    validated. The key's request bucket is charged here; its token bucket by the routes that generate, which
    know ``max_tokens``. The key's entry is left in ``request.state.api_key``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = getattr(scope.get("app"), "state", None)
        keys = getattr(state, "api_keys", None)
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/admin" or path.startswith("/admin/")):
            gate = getattr(state, "admin_gate", None)
            refusal = await gate(scope) if gate is not None else None
            if refusal is not None:
                await _refuse(send, *refusal)
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http" or not keys or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        from serve_app.ingress.limits import digest
        from serve_app.observability.metrics import metric

        token = bearer(scope.get("headers", ()))
        entry = keys.get(digest(token)) if token else None
        if entry is None:
            await _refuse(send, 401, "missing or unknown API key (Authorization: Bearer <key>)")
            return
        scope.setdefault("state", {})["api_key"] = entry
        kind, wait = state.limiter.admit(entry, requests=1)
        if kind is not None:
            metric("serve_app_rate_limited_requests").inc(tags={"limit": kind})
            await _refuse(send, 429, f"rate limit of this API key reached ({entry.requests_per_minute:g} requests per "
                          "minute); retry later", [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
            return
        await self.app(scope, receive, send)
