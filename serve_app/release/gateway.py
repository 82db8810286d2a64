"""The Serve gateway: the one place the release package talks to Serve.

``ServeGateway`` is what the release controller's state machines need from Serve, and nothing more: read
Serve's details of the running applications, apply a whole config in place, probe one deployment's health
and call one of its methods. ``RayServeGateway`` implements it with Serve's controller client (the private API ``serve deploy``
itself uses: Serve has no public call that applies a multi-application config in place); the unit tests
implement it with a fake (tests/fakes/serve_gateway.py).

Configs given to the gateway are plain (serve_app/config/apps.py): expanding each into one Serve application
per component is how this app hands a config to Serve, so it happens here, on the way in. What it reports
(``details``, ``probe``, ``call``) is Serve's: application names are the components'.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from serve_app.calls.handles import call
from serve_app.config.apps import expand
from serve_app.release.plan import probe_method


class ServeGateway(abc.ABC):
    #: How long Serve lets a replica finish its requests when it stops, for a deployment that sets no
    #: ``graceful_shutdown_timeout_s`` (Serve's default).
    default_graceful_shutdown_s: float

    @abc.abstractmethod
    def details(self) -> dict[str, Any]:
        """Serve's details of every application (``serve status``'s data): ``{"applications": {name:
        {"status", "message", "last_deployed_time_s", "deployed_app_config", "deployments": {...}}}, ...}``.
        Blocking: async callers run it in a thread."""

    @abc.abstractmethod
    async def apply(self, config: dict[str, Any]) -> float:
        """Start deploying the whole plain ``config`` in place, expanded (what ``serve deploy`` of the expanded
        form does: every application it leaves out is deleted), and return the wall-clock time just before it
        was handed over, to compare with ``last_deployed_time_s``."""

    @abc.abstractmethod
    def probe(self, app: str, deployment: str) -> Awaitable[Any]:
        """One health probe of ``deployment`` of application ``app`` (its method: ``plan.probe_method``).

        Finding the deployment happens at once (and raises if Serve has none by that name); the call itself
        happens when the result is awaited, so the caller bounds it with its own deadline."""

    @abc.abstractmethod
    def call(self, app: str, deployment: str, method: str, *args) -> Awaitable[Any]:
        """``method(*args)`` on one replica of ``deployment`` (an adapter's trial load), found and called like a
        probe."""

    @abc.abstractmethod
    def forget(self, app: str, deployments: list[str]) -> None:
        """Remove what Serve keeps of a deleted application's deployments outside their replicas (the prefix
        router's tree actor, serve_app/llm/router.py, which Serve itself removes only at ``serve.shutdown``).
        Blocking."""


# The callers of ``probe`` and ``call`` bound them with their own deadline (a release's ready_timeout_s, at
# most an hour); this is only the backstop every handle call has.
CALLER_BOUND_S = 3600.0


def _client():
    from ray.serve.context import _get_global_client

    return _get_global_client()


class RayServeGateway(ServeGateway):
    def __init__(self):
        from ray.serve._private.constants import DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S

        self.default_graceful_shutdown_s = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S

    def details(self) -> dict[str, Any]:
        return _client().get_serve_details()

    async def apply(self, config: dict[str, Any]) -> float:
        from ray.serve.schema import ServeDeploySchema

        started = time.time()
        schema = ServeDeploySchema.model_validate(expand(config))
        await asyncio.to_thread(_client().deploy_apps, schema, _blocking=False)
        return started

    def probe(self, app: str, deployment: str) -> Awaitable[Any]:
        from ray import serve

        method = probe_method(deployment)
        if method is None:  # the watch probes only deployments that have a probe
            raise ValueError(f"{deployment} has no health probe")
        handle = serve.get_deployment_handle(deployment, app)

        return call(handle, method, timeout_s=CALLER_BOUND_S)

    def call(self, app: str, deployment: str, method: str, *args) -> Awaitable[Any]:
        from ray import serve

        return call(serve.get_deployment_handle(deployment, app), method, *args, timeout_s=CALLER_BOUND_S)

    def forget(self, app: str, deployments: list[str]) -> None:
        from serve_app.llm.router import drop_tree

        for deployment in deployments:
            drop_tree(app, deployment)
