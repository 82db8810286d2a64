"""The Serve application builders: ``build_app`` (named by every config file, ``import_path:
serve_app.app:build_app``) and ``build_llm``, the LLM deployment alone, which the release controller deploys
as a separate application for a canary (serve_app/release/canary.py)."""

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


def build_llm(args: dict[str, Any] | None = None) -> Application:
    """The LLM deployment of these settings alone (a canary application: no HTTP route, reached by handle)."""
    from serve_app.llm.deployment import LLMServer

    settings = validate_app_args(args)
    if not settings.model.enabled:
        from serve_app.config.loader import ConfigError

        raise ConfigError("invalid config: args.model.enabled: an LLM application needs the model enabled")
    return LLMServer.bind(settings.model_dump(mode="json"))
