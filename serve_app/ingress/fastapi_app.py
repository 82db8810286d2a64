"""The FastAPI app of the Ingress deployment: every resource's router, the middleware in their documented
order (serve_app/ingress/middleware), and the error handlers (serve_app/ingress/errors.py). Each Ingress replica
builds its own (serve_app/ingress/deployment.py), after its constructor, over its IngressContext."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from serve_app.ingress import middleware
from serve_app.ingress.errors import install_error_handlers
from serve_app.ingress.routes import ROUTERS

if TYPE_CHECKING:
    from serve_app.ingress.context import IngressContext


def create_app(context: IngressContext | None = None) -> FastAPI:
    """The app over ``context`` (None: no state, e.g. to read the OpenAPI schema)."""
    app = FastAPI(title="serve_app", version="0.1.0",
                  description="OpenAI-compatible LLM serving and retrieval on Ray Serve.")
    for router in ROUTERS:
        app.include_router(router)
    middleware.install(app)
    install_error_handlers(app)
    if context is not None:
        app.state.context = context  # the app's only state: routes and middleware read what they need in it
    return app
