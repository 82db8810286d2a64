"""The FastAPI app of the Ingress deployment: every resource's router, the middleware in their documented
order (serve_app/ingress/middleware), and the error handlers (serve_app/ingress/errors.py). Each Ingress replica
builds its own (serve_app/ingress/deployment.py), after its constructor, with its state in ``app.state``."""

from __future__ import annotations

from fastapi import FastAPI

from serve_app.ingress import middleware
from serve_app.ingress.errors import install_error_handlers
from serve_app.ingress.routes import ROUTERS


def create_app() -> FastAPI:
    app = FastAPI(title="serve_app", version="0.1.0",
                  description="OpenAI-compatible LLM serving and retrieval on Ray Serve.")
    for router in ROUTERS:
        app.include_router(router)
    middleware.install(app)
    install_error_handlers(app)
    return app
