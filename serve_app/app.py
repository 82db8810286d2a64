"""The Serve application builders: ``build_app`` (named by every config file, ``import_path:
serve_app.app:build_app``) and ``build_llm``, the LLM deployment alone, which the release controller deploys
as a separate application for a canary (serve_app/release/canary.py)."""

from __future__ import annotations

from typing import Any, cast

from ray.serve import Application, Deployment

from serve_app.config.loader import validate_app_args
from serve_app.config.names import LLM_DEPLOYMENT


def _deployment(cls: type) -> Deployment:
    """A class decorated with ``@serve.deployment`` as what the decorator made it, a Serve ``Deployment``
    (``.options``, ``.bind``). mypy ignores class decorators and sees the plain class; this is the one place
    that says otherwise."""
    return cast(Deployment, cls)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """From plain settings every deployment is bound with them; from split ones (config/parts.py: what
    ``serve-app run`` and the release controller deploy) ``args`` only say which components exist and each
    deployment reads its part of the settings from its environment."""
    from serve_app.config.parts import SPLIT_KEY
    from serve_app.ingress.deployment import Ingress
    from serve_app.llm.deployment import LLMServer

    args = args or {}  # what validate_app_args reads None as
    split = args.get(SPLIT_KEY)
    if split is not None:
        keys = {"model", "vector", "agent"}
        if set(args) != {SPLIT_KEY} or not keys <= set(split) <= keys | {"llm_deployments"}:
            from serve_app.config.loader import ConfigError

            raise ConfigError(f"invalid config: args.{SPLIT_KEY} must hold model, vector, agent and llm_deployments")
        plain, model_on, vector_on, agent_on = None, bool(split["model"]), bool(split["vector"]), bool(split["agent"])
        llm_names = list(split.get("llm_deployments") or ([LLM_DEPLOYMENT] if model_on else []))
    else:
        settings = validate_app_args(args)
        plain = settings.model_dump(mode="json")
        model_on, vector_on, agent_on = settings.model.enabled, settings.vector.enabled, settings.agent.enabled
        llm_names = list(settings.served_models())
    # One LLM deployment per served model, each with its own replicas and autoscaling.
    llms = {name: _deployment(LLMServer).options(name=name).bind(plain, name) for name in llm_names}
    vector = embedder = None
    if vector_on:
        from serve_app.vector.deployment import EmbedderServer, VectorStoreServer

        embedder = _deployment(EmbedderServer).bind(plain)
        vector = _deployment(VectorStoreServer).bind(plain, embedder)
    agent = None
    if llms and agent_on:
        from serve_app.agent.deployment import AgentServer

        agent = _deployment(AgentServer).bind(plain, llms, vector)
    return _deployment(Ingress).bind(llms, plain, vector, embedder, agent)


def build_llm(args: dict[str, Any] | None = None) -> Application:
    """The LLM deployment of these settings alone (a canary application: no HTTP route, reached by handle)."""
    from serve_app.llm.deployment import LLMServer

    settings = validate_app_args(args)
    if not settings.model.enabled:
        from serve_app.config.loader import ConfigError

        raise ConfigError("invalid config: args.model.enabled: an LLM application needs the model enabled")
    return _deployment(LLMServer).bind(settings.model_dump(mode="json"), LLM_DEPLOYMENT)
