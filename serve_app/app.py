"""The Serve application builders, one per kind of application (serve_app/config/apps.py): the ingress, an
LLM (one per served model, and a canary's), retrieval (Embedder + VectorStore) and the agent. Each takes its
application's ``args``, its own part of the settings, and binds its deployments with them.

``build_app`` is what a config file names: the plain form, which ``serve-app run``, ``serve-app deploy``
and the release controller expand into these applications; Serve itself never builds it."""

from __future__ import annotations

from typing import Any, cast

from ray.serve import Application, Deployment

from serve_app.config.components import AgentAppSettings, LLMAppSettings, RetrievalAppSettings
from serve_app.config.loader import ConfigError, validate_app_args, validate_component_args


def _deployment(cls: type) -> Deployment:
    """A class decorated with ``@serve.deployment`` as what the decorator made it, a Serve ``Deployment``
    (``.options``, ``.bind``). mypy ignores class decorators and sees the plain class; this is the one place
    that says otherwise."""
    return cast(Deployment, cls)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The plain form is expanded before Serve sees it; handed to Serve as it is, say how to expand it."""
    raise ConfigError("serve_app.app:build_app is the plain form of a config: run it with `serve-app run`, or "
                      "write Serve's multi-application form with `serve-app expand CONFIG` and `serve deploy` that")


def build_ingress(args: dict[str, Any] | None = None) -> Application:
    """The Ingress: the application with the HTTP route, reaching the others by handle."""
    from serve_app.ingress.deployment import Ingress

    return _deployment(Ingress).bind(validate_app_args(args).model_dump(mode="json"))


def build_llm(args: dict[str, Any] | None = None) -> Application:
    """One served model's LLM deployment (also a canary's application: no HTTP route, reached by handle)."""
    from serve_app.llm.deployment import LLMRoot, LLMServer

    settings = validate_component_args(LLMAppSettings, args)
    llm = _deployment(LLMServer).options(name=settings.deployment).bind(settings.model_dump(mode="json"))
    return _deployment(LLMRoot).bind(llm)


def build_retrieval(args: dict[str, Any] | None = None) -> Application:
    """The retrieval tier: the Embedder and the VectorStore, which embeds queries in-process and documents
    through the Embedder."""
    from serve_app.vector.deployment import EmbedderServer, VectorStoreServer

    settings = validate_component_args(RetrievalAppSettings, args).model_dump(mode="json")
    return _deployment(VectorStoreServer).bind(settings, _deployment(EmbedderServer).bind(settings))


def build_agent(args: dict[str, Any] | None = None) -> Application:
    from serve_app.agent.deployment import AgentServer

    return _deployment(AgentServer).bind(validate_component_args(AgentAppSettings, args).model_dump(mode="json"))
