"""The release controller's two state machines: a rollout (apply → ready → watch → good, or the automatic
rollback) and a canary (start it → route a share → judge the window → promote, or remove it).

They talk to Serve only through a ``ServeGateway`` (release/gateway.py), record outcomes in the ``History``,
and report progress in a ``ReleaseState`` they share with the actor (release/controller.py), which reads it
for /admin/status. Time comes from an injected clock and sleep (``time.monotonic`` and ``asyncio.sleep`` by
default), so their deadlines can be tested without waiting for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serve_app.config.apps import component_apps
from serve_app.config.components import component_app
from serve_app.config.loader import deployment_names
from serve_app.config.names import LLM_DEPLOYMENT
from serve_app.config.settings import AppSettings, CanarySettings
from serve_app.errors import unwrap
from serve_app.release.canary import CANARY, PRIMARY, ArmStats, judge
from serve_app.release.history import History
from serve_app.release.plan import (
    app_settings,
    canary_application,
    canary_name,
    drain_bound_s,
    label,
    new_adapters,
    probe_method,
)

if TYPE_CHECKING:
    from serve_app.release.gateway import ServeGateway

logger = logging.getLogger("ray.serve")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


class ReleaseFailed(Exception):
    pass


@dataclass
class CanaryRun:
    """A canary that is out: its release, settings, phase (starting | window | rolling back | promoting)
    and both sides' counts, reported by the ingress replicas during the window."""

    n: int
    settings: CanarySettings
    phase: str = "starting"
    window_started_at: float | None = None  # wall clock, for /admin/status
    stats: dict[str, ArmStats] = field(default_factory=lambda: {PRIMARY: ArmStats(), CANARY: ArmStats()})


@dataclass
class ReleaseState:
    """What the state machines change and the actor reports."""

    serving: int | None  # the release whose configuration Serve runs (None: the history holds none yet)
    deploying: int | None = None
    canary: CanaryRun | None = None
    leftover_canary: bool = False  # a canary application is still to be removed


class Rollout:
    """A whole release rolled out in place, watched, and rolled back to the previous one when it fails."""

    def __init__(self, app: str, gateway: ServeGateway, history: History, state: ReleaseState,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
        self.app, self.gateway, self.history, self.state = app, gateway, history, state
        self.clock, self.sleep = clock, sleep

    async def run(self, n: int, config: dict, settings: AppSettings, previous: dict | None,
                  prefix: str = "") -> None:
        """Roll out release ``n`` (``config``, recorded as ``deploying``); on failure go back to ``previous``
        (a stored release whose config is already migrated; None: nothing to go back to)."""
        t0 = self.clock()
        self.state.serving = n
        try:
            started = await self.gateway.apply(label(config, self.app, n))
            await self.wait_ready(started, settings)
            await self.try_adapters(settings, app_settings(previous["config"], self.app) if previous else None)
            await self.watch(settings)
            self.history.finish(n, "good", f"{prefix}healthy after {self.clock() - t0:.1f}s")
            logger.info("release %d is good", n)
        except Exception as exc:  # noqa: BLE001 - every failure leads to the rollback
            reason = str(exc) if isinstance(exc, ReleaseFailed) else f"{type(exc).__name__}: {exc}"
            logger.warning("release %d failed: %s", n, reason)
            if previous is None:
                self.history.finish(n, "failed", prefix + reason)
                return
            back = self.history.add(actor="controller", kind="rollback", note=f"automatic rollback of release {n}",
                                    config=previous["config"], changed=["everything"], status="deploying")
            self.history.finish(n, "failed", prefix + reason, rolled_back_to=back)
            self.state.serving = back
            t1 = self.clock()
            prev_settings = app_settings(previous["config"], self.app)
            try:
                started = await self.gateway.apply(label(previous["config"], self.app, back))
                await self.wait_ready(started, prev_settings)
                self.history.finish(back, "good", f"release {previous['n']} serving again {self.clock() - t1:.1f}s "
                                    f"after the rollback started ({self.clock() - t0:.1f}s after the deploy)")
            except Exception as exc2:  # noqa: BLE001 - any failure of the rollback is recorded as its outcome
                self.history.finish(back, "failed", f"rollback failed: {exc2}")
        finally:
            self.state.deploying = None

    async def wait_ready(self, started: float, settings: AppSettings, app_name: str | None = None) -> None:
        """Until every application of the release applied at ``started`` (its components, or ``app_name``
        alone) is RUNNING with every deployment HEALTHY; raises ReleaseFailed on a failure state, on replicas
        that cannot start, or past the deadline."""
        t0 = self.clock()
        names = [app_name] if app_name else list(component_apps(self.app, settings))
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

    async def watch(self, settings: AppSettings) -> None:
        """Probe every component's health for ``releases.watch_s``; ReleaseFailed after
        ``releases.health_failures`` failed probes of one in a row."""
        names = [n for n in sorted(deployment_names(settings)) if probe_method(n)]
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


class CanaryRollout:
    """A release's LLM tried on a share of the traffic next to the current release, which is not touched;
    promoted through a ``Rollout`` when it passes, removed when it fails or is aborted."""

    def __init__(self, rollout: Rollout):
        self.rollout = rollout
        self.app, self.gateway, self.history, self.state = rollout.app, rollout.gateway, rollout.history, rollout.state
        self.canary_app = canary_name(rollout.app)

    async def run(self, n: int, config: dict, settings: AppSettings, current: dict, cs: CanarySettings) -> None:
        """Canary of release ``n`` (``config``, recorded as ``deploying``) against ``current`` (a stored
        release whose config is already migrated)."""
        clock, wait_ready = self.rollout.clock, self.rollout.wait_ready
        t0 = clock()
        base, m = current["config"], current["n"]
        cur_settings = app_settings(base, self.app)
        route = {"app": self.canary_app, "share": cs.share, "release": n}
        self.state.canary = c = CanaryRun(n, cs)
        try:
            # 1. The canary's LLM next to the current release (which is not touched); no traffic yet.
            canary_app = canary_application(config, self.app, cs.share)
            started = await self.gateway.apply(label(base, self.app, m, canary_app=canary_app))
            await wait_ready(started, settings, self.canary_app)
            # 2. Route the share to it, then compare both sides over the window.
            started = await self.gateway.apply(label(base, self.app, m, canary=route, canary_app=canary_app))
            await wait_ready(started, cur_settings)
            c.phase, c.window_started_at = "window", time.time()
            verdict = await self.judge_window(c, settings, cs)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - every failure (or an abort) removes it
            if isinstance(exc, asyncio.CancelledError):
                reason = "aborted by a rollback request"
            else:
                reason = str(exc) if isinstance(exc, ReleaseFailed) else f"{type(exc).__name__}: {exc}"
            logger.warning("canary release %d failed: %s", n, reason)
            c.phase = "rolling back"
            try:
                await self.remove(current)
                self.history.finish(n, "failed", f"canary rolled back: {reason}; release {m} served throughout, the "
                                    f"canary was removed {clock() - t0:.1f}s after the deploy")
            except Exception as exc2:  # noqa: BLE001 - retried by the next call (the actor's clean-up)
                self.history.finish(n, "failed", f"canary rolled back: {reason}; removing it failed: {exc2}")
                self.state.leftover_canary = True
            self.state.canary = None
            self.state.deploying = None
            return
        # 3. Promote: all traffic back to the current release, then the whole release rolls out in place.
        logger.info("canary release %d passed: %s", n, verdict)
        c.phase = "promoting"
        try:
            started = await self.gateway.apply(label(base, self.app, m,
                                                     canary_app=canary_application(config, self.app, cs.share)))
            await wait_ready(started, cur_settings)
        except Exception as exc:  # noqa: BLE001 - the rollout below removes the canary application anyway
            logger.warning("routing back from canary %d: %s", n, exc)
        self.state.canary = None
        await self.rollout.run(n, config, settings, current, prefix=f"canary passed ({verdict}); promoted and ")

    async def judge_window(self, c: CanaryRun, settings: AppSettings, cs: CanarySettings) -> str:
        """Probe the canary and judge both sides' counts until a verdict; returns the reason it passed,
        raises ReleaseFailed with the reason it failed."""
        clock, sleep = self.rollout.clock, self.rollout.sleep
        end = clock() + cs.window_s
        failures = 0
        while True:
            await sleep(1.0)
            try:
                await asyncio.wait_for(self.gateway.probe(self.canary_app, LLM_DEPLOYMENT), settings.ingress.health_timeout_s)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - any failure of a probe counts
                failures += 1
                if failures >= settings.releases.health_failures:
                    raise ReleaseFailed(f"the canary's LLMServer failed its health check: {type(exc).__name__}: "
                                        f"{str(exc)[:300]}") from None
            final = clock() >= end
            if final:
                await sleep(2.5)  # the ingress replicas report every 2 s: take the window's last counts
            verdict, reason = judge(c.stats[PRIMARY], c.stats[CANARY], cs, final)
            if verdict == "fail":
                raise ReleaseFailed(reason)
            if verdict == "pass":
                return reason

    async def remove(self, current: dict) -> None:
        """Route everything to the current release, then remove the canary application."""
        cur_settings = app_settings(current["config"], self.app)
        details = await asyncio.to_thread(self.gateway.details)
        canary = details["applications"].get(self.canary_app)
        try:
            if canary and canary.get("deployed_app_config"):
                started = await self.gateway.apply(label(current["config"], self.app, current["n"],
                                                         canary_app=canary["deployed_app_config"]))
                await self.rollout.wait_ready(started, cur_settings)
        finally:
            # Removed even when routing back could not be confirmed: nothing may keep serving from it.
            started = await self.gateway.apply(label(current["config"], self.app, current["n"]))
        await self.rollout.wait_ready(started, cur_settings)
