"""The request's server span, current for everything the request does."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.ingress.middleware.common import method_label


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

        method = method_label(scope)
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
