"""What the ingress's routes work with: the settings, the handles of the other deployments, the clients and
plans built on them, the canary split, and the LLM's availability gate. One object per Ingress replica, made
by its constructor (serve_app/ingress/deployment.py) and handed to each route by FastAPI's dependency
injection (``context``), the way vLLM's OpenAI server hands its routes the serving objects in ``app.state``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request
from ray.serve.handle import DeploymentHandle

from serve_app.calls.handles import call
from serve_app.config.settings import AppSettings
from serve_app.errors import Forbidden, InvalidRequest, ModelNotFound, NotFound, UpstreamTimeout
from serve_app.ingress.availability import Availability
from serve_app.ingress.canary import CanaryRouter
from serve_app.llm.client import LLMClient
from serve_app.observability.metrics import metric
from serve_app.rag.pipeline import RagPipeline

logger = logging.getLogger("ray.serve")


class IngressContext:
    def __init__(self, settings: AppSettings, llms: dict[str, DeploymentHandle] | None,
                 vector: DeploymentHandle | None = None, embedder: DeploymentHandle | None = None,
                 agent: DeploymentHandle | None = None, controller_lookup: Callable[[], Any] | None = None):
        """``llms``: the LLM deployments' handles by deployment name (one per served model).
        ``controller_lookup``: finds (or starts) the release controller's actor; called on first use."""
        self.settings, self.vector, self.embedder, self.agent = settings, vector, embedder, agent
        llms = llms or {}
        # Served model name -> its LLM deployment's handle, the first model first.
        self.models: dict[str, DeploymentHandle] = {
            m.model.name: llms[d] for d, m in settings.served_models().items() if d in llms}
        self.llm = next(iter(self.models.values()), None)  # the first model's: a canary's counterpart
        # LoRA adapter -> the served name of its model (set again by the release controller: ``set_adapters``).
        self.adapters: dict[str, str] = {a: m for a, m in settings.adapters().items() if m in self.models}
        self.release = settings.release
        self._lookup, self._controller = controller_lookup, None
        self.metrics_url: str | None = None  # this node's metrics exporter (GET /metrics), looked up once
        self.rag: RagPipeline | None = None
        # The models RAG and the agent use (rag.model, agent.model; default: the first).
        self.rag_model = self.agent_model = None
        if self.models:
            self.rag_model = settings.served_model(settings.rag.model).model.name
            self.agent_model = settings.served_model(settings.agent.model).model.name
        if self.models and settings.rag.enabled:
            search = self.search if vector is not None else None
            name = self.rag_model
            self.rag = RagPipeline(LLMClient(self.models[name], name, settings.ingress), search, settings.rag,
                                   settings.prompts)
        self.router: CanaryRouter | None = None
        self._reporter: asyncio.Task | None = None
        # Per model: once none of its replicas has answered for a while, its requests get 503 at once.
        health_s = settings.ingress.health_timeout_s
        self.availability = {name: Availability(lambda h=handle: call(h, "health", timeout_s=health_s), 2.0,
                                                health_s, settings.ingress.llm_fail_fast_s)
                             for name, handle in self.models.items()}
        self._shown_release: str | None = None
        self.set_release(settings.release)

    # -- the release and the canary split ---------------------------------------------------------------

    def set_release(self, release: str) -> None:
        # Also refreshed on every /healthz and /metrics call: a value set only in the constructor was not
        # exported by Ray 2.60's agent (values set while handling requests are).
        info = metric("serve_app_release_info")
        if self._shown_release not in (None, release):
            info.set(0, tags={"release": self._shown_release})
        info.set(1, tags={"release": release})
        self._shown_release = self.release = release

    def set_canary(self, canary: dict[str, Any] | None, canary_handle) -> None:
        """The canary split of the ingress's ``user_config`` (None: no canary out). ``canary_handle(app)`` gives
        the canary application's LLM handle."""
        if not canary or self.llm is None:
            self.router = None
        elif self.router is None or self.router.release != int(canary["release"]) \
                or self.router.share != float(canary["share"]):
            self.router = CanaryRouter(self.llm, canary_handle(canary["app"]), float(canary["share"]),
                                       int(canary["release"]))

    def canary_reporter(self) -> None:
        """Send the canary counts to the release controller every 2 s while a canary is out."""
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_canary())

    async def _report_canary(self) -> None:
        router = self.router
        while router is not None:
            await asyncio.sleep(2.0)
            data = router.flush()
            if data is not None:
                try:
                    await call(self.release_controller(), "canary_report", router.release, data, timeout_s=10)
                except Exception:
                    logger.warning("could not report canary counts to the release controller", exc_info=True)
            if self.router is not router:
                router = self.router

    def set_adapters(self, by_model: dict[str, dict[str, str]] | None) -> None:
        """The adapters of the ingress's ``user_config`` (served name -> adapter -> folder; None: unchanged)."""
        if by_model is not None:
            self.adapters = {a: m for m, adapters in by_model.items() if m in self.models for a in adapters}

    def release_controller(self):
        if self._controller is None:
            if self._lookup is None:
                raise NotFound("no release controller in this deployment")
            self._controller = self._lookup()
        return self._controller

    def forget_release_controller(self) -> None:
        """Look the controller up again on the next call (it did not answer: restarted, or not started yet)."""
        self._controller = None

    # -- what routes need of the other deployments -------------------------------------------------------

    def require_llm(self) -> DeploymentHandle:
        if self.llm is None:
            raise NotFound("the LLM is disabled in this deployment")
        return self.llm

    def allowed_models(self, api_key: Any = None) -> list[str]:
        """The chat models an API key may use (every one without a key or an allow-list), the first first."""
        allowed = getattr(api_key, "models", None)
        return [m for m in self.models if allowed is None or m in allowed]

    def allowed_adapters(self, api_key: Any = None) -> list[str]:
        """The LoRA adapters an API key may use: every one without an allow-list, else those it lists by name
        (allowing a base model does not allow its adapters: each adapter may be one tenant's)."""
        return [a for a in self.adapters if self.key_allows(api_key, a)]

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
        if requested in self.adapters and self.key_allows(api_key, requested):
            return requested, self.models[self.adapters[requested]].options(multiplexed_model_id=requested)
        if requested is None:
            raise ModelNotFound("This API key may use no chat model.", "model")
        if requested == self.embedder_name() and self.key_allows(api_key, requested):
            raise InvalidRequest(f"`{requested}` is an embedding model: use it with /v1/embeddings (chat models: "
                                 f"{', '.join(allowed)})", "model")
        raise ModelNotFound(f"The model `{requested}` does not exist.", "model")

    def embedder_name(self) -> str | None:
        return self.settings.vector.embedder_name if self.embedder is not None else None

    @staticmethod
    def key_allows(api_key: Any, model: str) -> bool:
        allowed = getattr(api_key, "models", None)
        return allowed is None or model in allowed

    def use_model(self, model: str, request: Any) -> None:
        """For a route that answers with a configured model (RAG, the agent): 403 when the request's API key may
        not use it, 503 at once while it has no healthy replica."""
        if not self.key_allows(getattr(request.state, "api_key", None), model):
            raise Forbidden("this API key may not use the model this route answers with")
        self.llm_gate(model)

    def llm_gate(self, model: str | None = None) -> None:
        """Refuse an LLM request at once (503) while the model (default: the first) has had no healthy replica
        for a while."""
        model = self.adapters.get(model, model)  # an adapter's: its model's
        gate = self.availability.get(model or next(iter(self.models), ""))
        if gate is not None:
            gate.check()

    async def vector_call(self, method: str, *args, handle: DeploymentHandle | None = None):
        """``method(*args)`` on the vector store (or ``handle``, e.g. the embedder) within the vector tier's
        deadline; 404 when the retrieval tier is not deployed."""
        handle = handle or self.vector
        if handle is None:
            raise NotFound("the retrieval tier is disabled in this deployment")
        timeout_s = self.settings.vector.timeout_s
        try:
            return await call(handle, method, *args, timeout_s=timeout_s)
        except UpstreamTimeout:  # named for the client as the tier, not as the method
            raise UpstreamTimeout(f"the vector tier did not answer within {timeout_s:g}s") from None

    async def search(self, query: str, top_k: int, filter_: dict[str, Any] | None,
                     mode: str | None = None) -> list[dict[str, Any]]:
        # RAG bounds its search by rag.retrieval_timeout_s (and answers without sources past it); this is the
        # call's own bound.
        return await call(self.vector, "search", query, top_k, filter_, None, mode,
                          timeout_s=self.settings.vector.timeout_s)


def context(request: Request) -> IngressContext:
    """FastAPI dependency: the replica's IngressContext."""
    return request.app.state.context


async def deadline(coro, seconds: float, what: str):
    try:
        return await asyncio.wait_for(coro, seconds)
    except TimeoutError:
        raise UpstreamTimeout(f"{what} did not finish within {seconds:g}s") from None


def bounded(value: int | None, default: int, limit: int, param: str) -> int:
    """A request's optional count (top_k, max_steps, ...) or its default, checked against its limit."""
    value = default if value is None else value
    if not 1 <= value <= limit:
        raise InvalidRequest(f"{param} must be between 1 and {limit}", param)
    return value
