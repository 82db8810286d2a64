"""What the ingress's routes and middleware work with, made by one constructor (``IngressContext.build``) from
the settings and the other deployments' handles: model routing and allow-lists (``models``), the release and
canary side (``releases``), retrieval (``retrieval``), the RAG plan, the agent's handle, API keys and rate
limits, the admin gate and the health monitor. One object per Ingress replica, kept in its FastAPI app's
``state.context`` and handed to each route by FastAPI's dependency injection (``context``), the way vLLM's
OpenAI server hands its routes the serving objects in ``app.state``. Tests build it with the same constructor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import Request
from ray.serve.handle import DeploymentHandle
from sqlalchemy import Engine

from serve_app.calls.handles import call
from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest, UpstreamTimeout
from serve_app.ingress.admin_gate import AdminGate
from serve_app.ingress.health_monitor import HealthMonitor, Probe
from serve_app.ingress.keybook import KeyBook
from serve_app.ingress.limits import KeyEntry, RateLimiter
from serve_app.ingress.releases import ReleaseSide
from serve_app.ingress.retrieval import Retrieval
from serve_app.ingress.routing import DEFAULT_APP, ModelRouting
from serve_app.ingress.shared_limits import SharedRateLimiter
from serve_app.llm.client import LLMClient
from serve_app.protocol.replicas import UP
from serve_app.rag.pipeline import RagPipeline
from serve_app.state import buckets
from serve_app.state.files import FileStore
from serve_app.state.keys import KeyStore
from serve_app.state.responses import ResponseStore


@dataclass
class IngressContext:
    settings: AppSettings
    models: ModelRouting
    releases: ReleaseSide
    retrieval: Retrieval
    admin: AdminGate
    health: HealthMonitor
    agent: DeploymentHandle | None = None
    rag: RagPipeline | None = None
    # API keys of the public API (ingress/keybook.py) and their buckets (ingress/limits.py, shared_limits.py).
    keys: KeyBook = field(default_factory=KeyBook)
    limiter: RateLimiter | SharedRateLimiter = field(default_factory=RateLimiter)
    metrics_url: str | None = None  # this node's metrics exporter (GET /metrics), looked up once
    # Stored responses and conversations of the Responses API (None: no state store).
    response_store: ResponseStore | None = None
    # Uploaded files' entries (None: no state store).
    file_store: FileStore | None = None

    @classmethod
    def build(cls, settings: AppSettings, llms: dict[str, DeploymentHandle] | None = None,
              vector: DeploymentHandle | None = None, embedder: DeploymentHandle | None = None,
              agent: DeploymentHandle | None = None, *, api_keys: dict[str, KeyEntry] | None = None,
              admin_digest: str | None = None, controller_lookup: Callable[[], Any] | None = None,
              app: str = DEFAULT_APP, state: Engine | None = None) -> IngressContext:
        """``llms``: the LLM deployments' handles by deployment name (one per served model).
        ``api_keys``: the key file's keys. ``state``: the state store (None: the key file's keys, fixed, and
        this replica's own rate-limit buckets).
        ``controller_lookup``: finds (or starts) the release controller's actor; called on first use.
        ``app``: the ingress's application (the plain application's name)."""
        retrieval = Retrieval(settings.vector, vector, embedder)
        models = ModelRouting(settings, llms, retrieval.embedder_name, app)
        releases = ReleaseSide(settings.release, models.models, settings.releases.canary_report_period_s,
                               controller_lookup)
        rag = None
        if models.rag_model is not None and settings.rag.enabled:
            name = models.rag_model
            rag = RagPipeline(LLMClient(models.models[name], name, settings.ingress),
                              retrieval.search if retrieval.enabled else None, settings.rag, settings.prompts)
        keys = KeyBook(KeyStore(state) if state is not None else None, api_keys)
        limiter = SharedRateLimiter(partial(buckets.take, state)) if state is not None else RateLimiter()
        admin = AdminGate(admin_digest, releases.controller, keys)
        health = health_monitor(settings, models, retrieval, agent, releases, admin_on=admin_digest is not None)
        return cls(settings, models, releases, retrieval, admin, health, agent, rag, keys, limiter,
                   response_store=ResponseStore(state) if state is not None else None,
                   file_store=FileStore(state) if state is not None else None)

    @property
    def api_keys(self) -> dict[str, KeyEntry] | None:
        """The keys checked now (digest -> entry; None: key checking is off)."""
        return self.keys.active


def health_monitor(settings: AppSettings, models: ModelRouting, retrieval: Retrieval,
                   agent: DeploymentHandle | None, releases: ReleaseSide, admin_on: bool) -> HealthMonitor:
    """The Ingress replica's monitor of every component it depends on (serve_app/ingress/health_monitor.py):
    the one probing loop per component, which /healthz reads and each model's availability gate is fed by."""
    timeout = settings.ingress.health_timeout_s
    probes: dict[str, Probe] = {}
    # One component per served model, named by it ("llm:<served name>"), so a model added or removed renames
    # no other's.
    llm_components = {f"llm:{name}": name for name in models.models}

    async def llm_health(name: str) -> dict:
        # A model that may scale to zero is never called but by clients: Serve says how its replicas are.
        count = await models.zero.view(name)
        if count is not None and count.scales_to_zero:
            return models.zero.health(name, count)
        return await call(models.models[name], "health", timeout_s=timeout)

    for component, name in llm_components.items():
        probes[component] = partial(llm_health, name)
    if retrieval.vector is not None:
        probes["vector"] = partial(call, retrieval.vector, "health", timeout_s=timeout)
        probes["embedder"] = partial(call, retrieval.embedder, "info", timeout_s=timeout)
    if agent is not None:
        probes["agent"] = partial(call, agent, "health", timeout_s=timeout)

    async def release_controller() -> dict:
        # Looking the actor up (or starting it) is a blocking Ray call: off the event loop.
        handle = await asyncio.to_thread(releases.controller)
        try:
            return await call(handle, "health", timeout_s=timeout)
        except BaseException:
            releases.forget_controller()  # look it up (or start it) again on the next probe
            raise

    if admin_on:
        # The release controller is required once the admin API is on (it watches and rolls back releases).
        probes["release_controller"] = release_controller

    def on_result(component: str, record: dict) -> None:
        if component in llm_components:
            models.availability[llm_components[component]].record(record["status"] in UP)

    return HealthMonitor(probes, settings.ingress.health_period_s, timeout, on_result)


def context(request: Request) -> IngressContext:
    """FastAPI dependency: the replica's IngressContext."""
    return request.app.state.context


def api_key(request: Request) -> KeyEntry | None:
    """The request's API key entry (left by the auth middleware; None while API keys are off)."""
    return getattr(request.state, "api_key", None)


def tenant_of(request: Request) -> str:
    """The tenant whose documents, responses and conversations a request reaches: its API key's, never the
    request body's ("" while keys are off: one tenant, as before tenants)."""
    key = api_key(request)
    return key.owner if key is not None else ""


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
