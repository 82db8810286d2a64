"""The FastAPI app every route module registers on, with its middleware and error handlers."""

from __future__ import annotations

from fastapi import FastAPI

from serve_app.ingress.errors import install_error_handlers
from serve_app.ingress.middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware, TracingMiddleware

app = FastAPI(title="serve_app", version="0.1.0", description="OpenAI-compatible LLM serving and retrieval on Ray Serve.")
app.add_middleware(BodyLimitMiddleware)
app.add_middleware(AuthMiddleware)  # outside the body limit: an unknown client's body is never read
app.add_middleware(MetricsMiddleware)  # outside the body limit: it also counts what that refuses
app.add_middleware(TracingMiddleware)  # added last = outermost: every log line and metric happens inside the span
install_error_handlers(app)
