"""Serve without Ray: a ``ServeGateway`` (serve_app/release/gateway.py) that keeps the applied applications in
memory, so the release controller's state machines run their real flows in unit tests.

Faults are produced on demand, which a real Serve cannot do: an apply that raises (``fail_apply``), a
deployment that stays UPDATING for a while after each apply (``ready_after_s``, on the injected clock), a
failing or hanging health probe (``on_probe``). It is given plain configs and expands them as the real gateway
does (serve_app/config/apps.py): it reports one application per component, each with the deployments its
expanded config lists (every deployment of the component, with options or not).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.config.apps import expand
from serve_app.release.gateway import ServeGateway
from tests.fakes.clock import FakeClock


class FakeServeGateway(ServeGateway):
    default_graceful_shutdown_s = 20  # Serve's DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S

    def __init__(self, apps: dict[str, dict], clock: FakeClock | None = None, ready_after_s: float = 0.0,
                 graceful_shutdown_s: float | None = None):
        self.clock = clock or FakeClock()
        # name → the (expanded) application config Serve runs; ``apps`` are plain
        self.apps = _expanded(list(apps.values()))
        self.deployed_at = self.clock()
        self.applied: list[dict[str, Any]] = []  # every applied config, in order
        self.probes: list[tuple[str, str]] = []  # every (application, deployment) probed, in order
        self.fail_apply = 0  # the next this many applies raise, as when Serve is unreachable
        self.ready_after_s = ready_after_s  # deployments are UPDATING this long after each apply
        self.graceful_shutdown_s = graceful_shutdown_s  # reported in each deployment's options when set
        # Called with each applied config, after it is applied.
        self.on_apply: Callable[[dict[str, Any]], None] | None = None
        # Awaited by each probe: raising fails the probe, never returning hangs it.
        self.on_probe: Callable[[str, str], Awaitable[None]] | None = None
        # Other method calls on a deployment (an adapter's trial load): recorded, answered by ``on_call``.
        self.calls: list[tuple] = []
        self.on_call: Callable[..., Awaitable[Any]] | None = None
        self.at_zero: set[str] = set()  # deployments deployed with min_replicas 0, at zero replicas now
        self.forgotten: list[tuple[str, list[str]]] = []  # (application, its deployments) whose state was removed

    def details(self) -> dict[str, Any]:
        ready = self.clock() - self.deployed_at >= self.ready_after_s
        apps = {}
        for name, config in self.apps.items():
            deployments = {}
            for d in _deployments(config):
                deployment: dict[str, Any] = {"status": "HEALTHY" if ready else "UPDATING",
                                              "status_trigger": "CONFIG_UPDATE_COMPLETED" if ready
                                              else "CONFIG_UPDATE_STARTED"}
                if self.graceful_shutdown_s is not None:
                    deployment["deployment_config"] = {"graceful_shutdown_timeout_s": self.graceful_shutdown_s}
                if d["name"] in self.at_zero:
                    deployment["target_num_replicas"] = 0
                    deployment.setdefault("deployment_config", {})["autoscaling_config"] = {"min_replicas": 0}
                deployments[d["name"]] = deployment
            apps[name] = {"status": "RUNNING" if ready else "DEPLOYING", "last_deployed_time_s": self.deployed_at,
                          "deployed_app_config": copy.deepcopy(config), "deployments": deployments}
        return {"applications": apps}

    async def apply(self, config: dict[str, Any]) -> float:
        if self.fail_apply:
            self.fail_apply -= 1
            raise RuntimeError("Serve is unreachable")
        self.applied.append(copy.deepcopy(config))
        self.apps = _expanded(config["applications"])
        self.deployed_at = self.clock()
        if self.on_apply is not None:
            self.on_apply(config)
        return self.deployed_at

    def _find(self, app: str, deployment: str) -> None:
        """As Serve's handle lookup: an application without that deployment raises at once."""
        if deployment not in [d["name"] for d in _deployments(self.apps.get(app) or {"import_path": ":none"})]:
            raise KeyError(f"no deployment {deployment!r} in application {app!r}")

    def probe(self, app: str, deployment: str) -> Awaitable[Any]:
        self._find(app, deployment)

        async def call() -> None:
            self.probes.append((app, deployment))
            if self.on_probe is not None:
                await self.on_probe(app, deployment)

        return call()

    def call(self, app: str, deployment: str, method: str, *args) -> Awaitable[Any]:
        self._find(app, deployment)

        async def call() -> Any:
            self.calls.append((app, deployment, method, *args))
            return await self.on_call(app, deployment, method, *args) if self.on_call is not None else {}

        return call()


    def forget(self, app: str, deployments: list[str]) -> None:
        self.forgotten.append((app, deployments))


def _expanded(apps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in expand({"applications": copy.deepcopy(apps)})["applications"]}


def _deployments(app: dict[str, Any]) -> list[dict[str, Any]]:
    """Every deployment the application runs (its builder's), listed in its config or not."""
    from serve_app.config.components import LLMAppSettings
    from serve_app.config.names import AGENT, EMBEDDER, INGRESS, VECTOR_STORE

    kind = app["import_path"].rsplit(":", 1)[1]
    if kind == "none":
        return []
    if kind == "build_llm":
        names = [LLMAppSettings.model_validate(app.get("args") or {}).deployment]
    else:
        names = {"build_ingress": [INGRESS], "build_retrieval": [EMBEDDER, VECTOR_STORE], "build_agent": [AGENT]}[kind]
    listed = {d["name"]: d for d in app.get("deployments") or []}
    return [listed.get(n, {"name": n}) for n in names]
