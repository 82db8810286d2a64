"""Which deployment answers a request that names a model: the served chat models, their LoRA adapters, the
embedding model's name, what an API key's allow-list lets it see, and each model's availability gate."""

from __future__ import annotations

from typing import Any

from ray.serve.handle import DeploymentHandle

from serve_app.config.settings import AppSettings
from serve_app.errors import Forbidden, InvalidRequest, ModelNotFound, NotFound
from serve_app.ingress.availability import Availability
from serve_app.ingress.replicas import ScaleToZero

DEFAULT_APP = "serve_app"  # the application name of the shipped configs


def key_allows(api_key: Any, model: str) -> bool:
    """Whether an API key (None: API keys off) may use ``model``: every model without an allow-list."""
    allowed = getattr(api_key, "models", None)
    return allowed is None or model in allowed


class ModelRouting:
    def __init__(self, settings: AppSettings, llms: dict[str, DeploymentHandle] | None,
                 embedder_name: str | None = None, app: str = DEFAULT_APP):
        """``llms``: the LLM deployments' handles by deployment name (one per served model).
        ``embedder_name``: the embedding model's served name (None: no retrieval tier). ``app``: the plain
        application's name (the ingress's own application)."""
        llms = llms or {}
        # Served model name -> its LLM deployment's handle, the first model first.
        self.models: dict[str, DeploymentHandle] = {
            m.model.name: llms[d] for d, m in settings.served_models().items() if d in llms}
        self.first: DeploymentHandle | None = next(iter(self.models.values()), None)
        # LoRA adapter -> the served name of its model (set again by each release: ``set_adapters``).
        self.adapters: dict[str, str] = {a: m for a, m in settings.adapters().items() if m in self.models}
        self.embedder_name = embedder_name
        # The models RAG and the agent answer with (rag.model, agent.model; default: the first).
        self.rag_model: str | None = None
        self.agent_model: str | None = None
        if self.models:
            self.rag_model = settings.served_model(settings.rag.model).model.name
            self.agent_model = settings.served_model(settings.agent.model).model.name
        # Per model: once none of its replicas has answered the health monitor for a while, its requests get
        # 503 at once (fed by the health monitor: serve_app/ingress/context.py, health_monitor).
        self.availability = {name: Availability(settings.ingress.llm_fail_fast_s) for name in self.models}
        # The models that may scale to zero: called by client requests alone (serve_app/ingress/replicas.py).
        self.zero = ScaleToZero(app, {m.model.name: d for d, m in settings.served_models().items()
                                      if m.model.name in self.models})

    def set_adapters(self, by_model: dict[str, dict[str, str]] | None) -> None:
        """The adapters of the ingress's ``user_config`` (served name -> adapter -> folder; None: unchanged)."""
        if by_model is not None:
            self.adapters = {a: m for m, adapters in by_model.items() if m in self.models for a in adapters}

    def require_llm(self) -> DeploymentHandle:
        if self.first is None:
            raise NotFound("the LLM is disabled in this deployment")
        return self.first

    def allowed_models(self, api_key: Any = None) -> list[str]:
        """The chat models an API key may use (every one without a key or an allow-list), the first first."""
        return [m for m in self.models if key_allows(api_key, m)]

    def allowed_adapters(self, api_key: Any = None) -> list[str]:
        """The LoRA adapters an API key may use: every one without an allow-list, else those it lists by name
        (allowing a base model does not allow its adapters: each adapter may be one tenant's)."""
        return [a for a in self.adapters if key_allows(api_key, a)]

    def chat_model(self, requested: str | None, api_key: Any = None) -> tuple[str, DeploymentHandle]:
        """(served name, handle) of the chat model a request names (none named: the first it may use). A model
        outside the key's allow-list gets the same 404 as an unknown one, so names do not leak. An adapter's
        handle carries it as Serve's multiplexed model id, so Serve routes the request to a replica of its model
        that holds it when one does (serve_app/llm/deployment.py)."""
        self.require_llm()
        allowed = self.allowed_models(api_key)
        if requested is None and allowed:
            return allowed[0], self.models[allowed[0]]
        if requested in allowed:
            return requested, self.models[requested]
        if requested in self.adapters and key_allows(api_key, requested):
            return requested, self.models[self.adapters[requested]].options(multiplexed_model_id=requested)
        if requested is None:
            raise ModelNotFound("This API key may use no chat model.", "model")
        if requested == self.embedder_name and key_allows(api_key, requested):
            raise InvalidRequest(f"`{requested}` is an embedding model: use it with /v1/embeddings (chat models: "
                                 f"{', '.join(allowed)})", "model")
        raise ModelNotFound(f"The model `{requested}` does not exist.", "model")

    def use_model(self, model: str | None, api_key: Any) -> None:
        """For a route that answers with a configured model (RAG, the agent): 403 when the API key may not use
        it, 503 at once while it has no healthy replica."""
        if model is None:
            raise NotFound("the LLM is disabled in this deployment")
        if not key_allows(api_key, model):
            raise Forbidden("this API key may not use the model this route answers with")
        self.gate(model)

    def gate(self, model: str | None = None) -> None:
        """Refuse an LLM request at once (503) while the model (an adapter: its model's; default: the first)
        has had no healthy replica for a while."""
        model = self.adapters.get(model, model) if model is not None else None
        gate = self.availability.get(model or next(iter(self.models), ""))
        if gate is not None:
            gate.check()
