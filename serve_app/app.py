"""The Serve application builder named by every config file (``import_path: serve_app.app:build_app``)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config.loader import validate_app_args


def build_app(args: dict[str, Any] | None = None) -> Application:
    from serve_app.ingress.app import Ingress
    from serve_app.llm.deployment import LLMServer

    settings = validate_app_args(args)
    plain = settings.model_dump(mode="json")
    llm = LLMServer.bind(plain) if settings.model.enabled else None
    vector = embedder = None
    if settings.vector.enabled:
        from serve_app.vector.deployment import EmbedderServer, VectorStoreServer

        embedder = EmbedderServer.bind(plain)
        vector = VectorStoreServer.bind(plain, embedder)
    agent = None
    if llm is not None and settings.agent.enabled:
        from serve_app.agent.deployment import AgentServer

        agent = AgentServer.bind(plain, llm, vector)
    return Ingress.bind(llm, plain, vector, embedder, agent)
