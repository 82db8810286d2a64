"""The release controller's rollout: apply → ready → watch → good, or the automatic rollback; a model added
(started before any request is routed to it) or removed (routing stopped and its streams drained before its
application goes). A canary's state machine, which promotes through a rollout, is release/canary_rollout.py.

They talk to Serve only through the ``Live`` config (release/live.py, which applies through a
``ServeGateway``), record outcomes in the ``History``, and report progress in a ``ReleaseState`` they share with
the actor (release/controller.py), which reads it for /admin/status. Each release has a scope (release/scopes.py):
it applies its scope's section of the config, waits for the applications that changed, probes the scope's
deployments, and a rollback puts back the scope's section alone. Time comes from an injected clock and sleep
(``time.monotonic`` and ``asyncio.sleep`` by default), so their deadlines can be tested without waiting for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from serve_app.config.apps import component_apps, llm_application
from serve_app.config.components import component_app
from serve_app.config.loader import deployment_names
from serve_app.config.settings import AppSettings, CanarySettings
from serve_app.errors import unwrap
from serve_app.protocol.replicas import counts_of
from serve_app.release.canary import CANARY, PRIMARY, ArmStats
from serve_app.release.history import History
from serve_app.release.live import Live, spliced
from serve_app.release.plan import app_entry, app_settings, drain_bound_s, new_adapters, probe_method
from serve_app.release.scopes import APP, model_deployment, model_of, scope_deployment_names

logger = logging.getLogger("ray.serve")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


class ReleaseFailed(Exception):
    pass


@dataclass
class CanaryRun:
    """A canary that is out: its release, scope, model, settings, phase (starting | window | rolling back |
    promoting) and both sides' counts, reported by the ingress replicas during the window."""

    n: int
    settings: CanarySettings
    scope: str = APP
    model: str = ""
    application: str = ""
    phase: str = "starting"
    window_started_at: float | None = None  # wall clock, for /admin/status
    stats: dict[str, ArmStats] = field(default_factory=lambda: {PRIMARY: ArmStats(), CANARY: ArmStats()})


@dataclass
class ReleaseState:
    """What the state machines change and the actor reports."""

    serving: int | None  # the release whose configuration Serve runs last (None: the history holds none yet)
    deploying: dict[str, int] = field(default_factory=dict)  # scope -> the release deploying in it
    canaries: dict[str, CanaryRun] = field(default_factory=dict)  # scope -> its canary out
    leftover_canary: bool = False  # a canary application is still to be removed


class Rollout:
    """A release (of the whole app or of one scope) rolled out in place, watched, and its scope rolled back to
    what it was when it fails."""

    def __init__(self, app: str, live: Live, history: History, state: ReleaseState,
                 good: Callable[[], dict[str, Any] | None], clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep):
        """``good()``: the running config composed from the history's good releases ({n, config}, None: none)."""
        self.app, self.live, self.gateway, self.history, self.state = app, live, live.gateway, history, state
        self.good, self.clock, self.sleep = good, clock, sleep

    async def run(self, n: int, config: dict, settings: AppSettings, previous: dict | None,
                  prefix: str = "", scope: str = APP) -> None:
        """Roll out release ``n`` (``config``, recorded as ``deploying`` in ``scope``); on failure put back
        ``previous``'s section of the scope (a stored release whose config is already migrated; None: nothing to
        go back to)."""
        t0 = self.clock()
        self.state.serving = n
        try:
            added = model_of(scope) if previous is not None else None
            if added is not None and previous is not None and \
                    added not in app_settings(previous["config"], self.app).model_names():
                await self.start_model(config, settings, added)
            started, changed = await self.live.apply(scope, config, n)
            await self.wait_ready(started, settings, self.waited(scope, settings, changed))
            await self.try_adapters(settings, app_settings(previous["config"], self.app) if previous else None)
            await self.watch(settings, scope_deployment_names(settings, scope), changed)
            self.history.finish(n, "good", f"{prefix}healthy after {self.clock() - t0:.1f}s")
            logger.info("release %d is good", n)
        except Exception as exc:  # noqa: BLE001 - every failure leads to the rollback
            reason = str(exc) if isinstance(exc, ReleaseFailed) else f"{type(exc).__name__}: {exc}"
            logger.warning("release %d failed: %s", n, reason)
            if previous is None:
                self.history.finish(n, "failed", prefix + reason)
                return
            await self.roll_back(n, scope, previous, prefix + reason, t0)
        finally:
            self.state.deploying.pop(scope, None)

    async def roll_back(self, n: int, scope: str, previous: dict, reason: str, t0: float) -> None:
        """Release ``n`` failed: put back ``previous``'s section of its scope, as a release of its own."""
        good = self.good()
        back_config = spliced(good["config"], self.app, scope, previous["config"]) if good else previous["config"]
        back = self.history.add(actor="controller", kind="rollback", note=f"automatic rollback of release {n}",
                                config=back_config, changed=["everything"] if scope == APP else [scope],
                                status="deploying", scope=scope)
        self.history.finish(n, "failed", reason, rolled_back_to=back)
        self.state.serving = back
        t1 = self.clock()
        prev_settings = app_settings(back_config, self.app)
        try:
            started, changed = await self.live.apply(scope, back_config, back)
            await self.wait_ready(started, prev_settings, self.waited(scope, prev_settings, changed))
            self.history.finish(back, "good", f"release {previous['n']} serving again {self.clock() - t1:.1f}s "
                                f"after the rollback started ({self.clock() - t0:.1f}s after the deploy)")
        except Exception as exc2:  # noqa: BLE001 - any failure of the rollback is recorded as its outcome
            self.history.finish(back, "failed", f"rollback failed: {exc2}")

    async def _scaling_to_zero(self, names: list[str]) -> set[str]:
        """Those of the deployments ``names`` that Serve runs with ``autoscaling_config.min_replicas: 0``."""
        counts = counts_of(await asyncio.to_thread(self.gateway.details))
        return {n for n in names if (c := counts.get((component_app(self.app, n), n))) is not None and c.scales_to_zero}

    def waited(self, scope: str, settings: AppSettings, changed: Iterable[str]) -> list[str] | None:
        """The applications a release of ``scope`` waits for: every one of the app (a whole release), else its
        scope's and those its change reached (the ingress's args hold every model's context length)."""
        if scope == APP:
            return None
        apps = component_apps(self.app, settings)
        own = {component_app(self.app, d) for d in scope_deployment_names(settings, scope) or ()}
        return sorted((own | set(changed)) & set(apps))

    async def start_model(self, config: dict, settings: AppSettings, model: str) -> None:
        """A model being added: its application started and healthy next to the release before the ingress
        routes to it (so it appears in /v1/models only once it can answer)."""
        deployment = model_deployment(settings, model)
        application = llm_application(app_entry(config, self.app), deployment)
        self.live.extra[application["name"]] = application
        try:
            started, _ = await self.live.apply()
            await self.wait_ready(started, settings, [application["name"]])
        finally:
            self.live.extra.pop(application["name"], None)  # the release's own apply carries it from now on

    async def remove_model(self, n: int, config: dict, settings: AppSettings, previous: dict, model: str) -> None:
        """Release ``n`` removes ``model``: the ingress stops routing to it first (a new ingress replica; the old
        one finishes its streams, Serve waiting up to its graceful_shutdown_timeout_s), then its application is
        deleted. On a failure the model is put back."""
        scope, t0 = f"model:{model}", self.clock()
        deployment = model_deployment(app_settings(previous["config"], self.app), model)
        application = llm_application(app_entry(self.live.config or previous["config"], self.app), deployment)
        self.state.serving = n
        try:
            self.live.extra[application["name"]] = application  # still running while the ingress drains
            started, changed = await self.live.apply(scope, config, n)
            await self.wait_ready(started, settings, self.waited(scope, settings, changed))
            self.live.extra.pop(application["name"], None)
            started, _ = await self.live.apply()
            await self.wait_gone(application["name"], settings, [deployment])
            self.history.finish(n, "good", f"{model!r} removed after {self.clock() - t0:.1f}s")
        except Exception as exc:  # noqa: BLE001 - every failure puts the model back
            self.live.extra.pop(application["name"], None)
            reason = str(exc) if isinstance(exc, ReleaseFailed) else f"{type(exc).__name__}: {exc}"
            logger.warning("release %d (removing %s) failed: %s", n, model, reason)
            await self.roll_back(n, scope, previous, reason, t0)
        finally:
            self.state.deploying.pop(scope, None)

    async def wait_gone(self, name: str, settings: AppSettings, deployments: Iterable[str] = ()) -> None:
        """Until Serve no longer lists the application ``name`` (its replicas have stopped); then what Serve keeps
        of its ``deployments`` (and of those it listed meanwhile) outside them is removed too."""
        t0, deployments = self.clock(), set(deployments)
        while name in (apps := (await asyncio.to_thread(self.gateway.details))["applications"]):
            deployments.update(apps[name].get("deployments") or {})
            if self.clock() - t0 > settings.releases.ready_timeout_s:
                raise ReleaseFailed(f"{name} not deleted within {settings.releases.ready_timeout_s:g}s")
            await self.sleep(0.5)
        try:  # the application is gone: what is left of it must not fail the release that removed it
            await asyncio.to_thread(self.gateway.forget, name, sorted(deployments))
        except Exception as exc:  # noqa: BLE001 - logged; Serve removes the rest at serve.shutdown
            logger.warning("removing what %s left behind failed: %s", name, exc)

    async def wait_ready(self, started: float, settings: AppSettings, apps: Iterable[str] | None = None) -> None:
        """Until every application of the release applied at ``started`` (its components, or ``apps``) is
        RUNNING with every deployment HEALTHY; raises ReleaseFailed on a failure state, on replicas that cannot
        start, or past the deadline."""
        t0 = self.clock()
        names = list(apps) if apps is not None else list(component_apps(self.app, settings))
        drain_s = 0.0
        bad: dict[str, int] = {}
        armed: dict[str, bool] = {}
        fails: dict[str, int] = {}
        while True:
            details = await asyncio.to_thread(self.gateway.details)
            apps = {n: details["applications"].get(n) for n in names}
            # Serve stamps every application of an applied config with the apply's time.
            if all(a is not None and a.get("last_deployed_time_s", 0) >= started - 1 for a in apps.values()):
                live = {n: a for n, a in apps.items() if a is not None}
                drain_s = max(drain_s, *(drain_bound_s(a, self.gateway.default_graceful_shutdown_s)
                                         for a in live.values()))
                deployments = {d: dep for a in live.values() for d, dep in (a.get("deployments") or {}).items()}
                # Statuses can still show the previous rollout for a moment after the apply: a failure state
                # counts once it has been seen on three polls in a row; a replica that died after the apply
                # counts at once.
                states = {n: a["status"] for n, a in live.items()} | {d: dep["status"] for d, dep in deployments.items()}
                for name, state in states.items():
                    bad[name] = bad.get(name, 0) + 1 if state in ("DEPLOY_FAILED", "UNHEALTHY") else 0
                    if bad[name] >= 3:
                        msg = live[name].get("message") if name in live else deployments[name].get("message")
                        raise ReleaseFailed(f"{name} is {state}: {(msg or '')[:500]}")
                for name, d in deployments.items():
                    # A replica of this release failed to start: Serve reports it as a transition of the
                    # deployment's trigger to REPLICA_STARTUP_FAILED (a stale one from the release before is
                    # ignored until the deployment has moved on). Serve would retry for minutes.
                    if d.get("status_trigger") == "REPLICA_STARTUP_FAILED":
                        if armed.get(name):
                            fails[name] = fails.get(name, 0) + 1
                            armed[name] = False
                            if fails[name] >= settings.releases.startup_failures:
                                raise ReleaseFailed(f"{name}: a replica failed to start: {(d.get('message') or '')[:500]}")
                    else:
                        armed[name] = True
                if all(a["status"] == "RUNNING" for a in live.values()) and all(
                        d["status"] == "HEALTHY" for d in deployments.values()):
                    return
            # Serve reports a deployment HEALTHY only once the replicas it replaced have stopped, and lets each
            # finish its requests for up to its graceful_shutdown_timeout_s: that drain is not the new
            # release's start-up, so it is added to the deadline (Serve bounds it itself).
            if self.clock() - t0 > settings.releases.ready_timeout_s + drain_s:
                raise ReleaseFailed(f"not RUNNING and healthy within {settings.releases.ready_timeout_s:g}s"
                                    + (f" (+{drain_s:g}s for replicas to drain)" if drain_s else ""))
            await self.sleep(0.5)

    async def try_adapters(self, settings: AppSettings, previous: AppSettings | None) -> None:
        """Have one replica of its model load every adapter this release adds (serve_app/llm/deployment.py
        ``trial_adapter``): one that does not load fails the release here, not at a user's first request."""
        for deployment, name, folder in new_adapters(settings, previous):
            try:
                await asyncio.wait_for(self.gateway.call(component_app(self.app, deployment), deployment,
                                                         "trial_adapter", folder),
                                       settings.releases.ready_timeout_s)
            except Exception as exc:  # noqa: BLE001 - whatever the reason, the adapter cannot serve
                cause = unwrap(exc)
                raise ReleaseFailed(f"the adapter {name!r} ({deployment}) does not load: "
                                    f"{type(cause).__name__}: {str(cause)[:300]}") from None

    async def watch(self, settings: AppSettings, deployments: set[str] | None = None,
                    changed: Iterable[str] = ()) -> None:
        """Probe the health of every component (or of ``deployments``) for ``releases.watch_s``; ReleaseFailed
        after ``releases.health_failures`` failed probes of one in a row. A model that scales to zero (deployed
        with ``min_replicas: 0``) is not probed, as a probe would start it or keep it from going to zero: unless
        the release changed its application (``changed``), which is then probed once to prove its new version,
        with the time a replica has to be ready (a cold start)."""
        names = [n for n in sorted(deployments if deployments is not None else deployment_names(settings))
                 if probe_method(n)]
        cold = await self._scaling_to_zero(names)
        for name in cold:
            app = component_app(self.app, name)
            if app not in set(changed):
                continue
            try:
                await asyncio.wait_for(self.gateway.probe(app, name), settings.releases.ready_timeout_s)
            except Exception as exc:  # the new version does not start or answer
                raise ReleaseFailed(f"{name} did not start from zero replicas and answer: {type(exc).__name__}: "
                                    f"{str(exc)[:300]}") from exc
        names = [n for n in names if n not in cold]
        failures = dict.fromkeys(names, 0)
        end = self.clock() + settings.releases.watch_s
        while True:
            for name in names:
                call = self.gateway.probe(component_app(self.app, name), name)
                try:
                    await asyncio.wait_for(call, settings.ingress.health_timeout_s)
                    failures[name] = 0
                except Exception as exc:  # any failure of a probe counts (and is chained to the ReleaseFailed)
                    failures[name] += 1
                    if failures[name] >= settings.releases.health_failures:
                        raise ReleaseFailed(
                            f"{name} failed its health check: {type(exc).__name__}: {str(exc)[:300]}") from exc
            if self.clock() >= end:
                return
            await self.sleep(1.0)
