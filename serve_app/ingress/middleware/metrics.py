"""Every answer counted and timed (refusals included), and one JSON access-log line per request."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.ingress.middleware.common import ingress_context, method_label

logger = logging.getLogger("ray.serve")


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
            method = method_label(scope)
            elapsed = time.perf_counter() - started
            metric("serve_app_http_requests").inc(tags={"route": template, "method": method, "status": str(status)})
            metric("serve_app_http_request_duration_seconds").observe(elapsed, tags={"route": template, "method": method})
            ctx = ingress_context(scope)
            # Serve's log filter adds request_id, application, deployment and replica to every line.
            logger.info("%s %s %s %.1fms", method, template, status, elapsed * 1000, extra={
                "http_method": method, "http_route": template, "status_code": status,
                "latency_ms": round(elapsed * 1000, 2), "release": ctx.releases.release if ctx is not None else None,
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
