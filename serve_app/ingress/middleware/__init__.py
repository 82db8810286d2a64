"""ASGI middleware of the ingress app, one per module, installed by ``install`` in this order.

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

from fastapi import FastAPI

from serve_app.ingress.middleware.auth import AuthMiddleware
from serve_app.ingress.middleware.body_limit import BodyLimitMiddleware
from serve_app.ingress.middleware.metrics import MetricsMiddleware
from serve_app.ingress.middleware.tracing import TracingMiddleware

__all__ = ["AuthMiddleware", "BodyLimitMiddleware", "MetricsMiddleware", "TracingMiddleware", "install"]


def install(app: FastAPI) -> None:
    """The middleware in the documented order: Starlette runs the one added last outermost."""
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AuthMiddleware)  # outside the body limit: an unknown client's body is never read
    app.add_middleware(MetricsMiddleware)  # outside the body limit: it also counts what that refuses
    app.add_middleware(TracingMiddleware)  # added last = outermost: every log line and metric happens inside the span
