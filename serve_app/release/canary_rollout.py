"""A canary's state machine: start it → route a share → judge the window → promote, or remove it.

A canary tries a release's LLM for one model (the first model's for a whole-app release, the scope's model
for a model-scoped one) on a share of that model's traffic next to the running release, which is not touched:
its application (``<model's application>-canary``) runs next to the release's (``Live.extra``), and the
ingress routes the share through its ``user_config`` (``Live.routes``, one entry per model, so canaries of
two models are out at once and each is judged on its own model's traffic). Passed, it is promoted through a
``Rollout`` of its scope; failed or aborted, routing goes back and its application is removed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from serve_app.config.settings import AppSettings, CanarySettings
from serve_app.release.canary import CANARY, PRIMARY, judge
from serve_app.release.plan import canary_application, canary_name, is_canary_app
from serve_app.release.rollout import CanaryRun, ReleaseFailed, Rollout
from serve_app.release.scopes import model_deployment

logger = logging.getLogger("ray.serve")


class CanaryRollout:
    """A release's LLM tried on a share of its model's traffic next to the current release, which is not
    touched; promoted through a ``Rollout`` when it passes, removed when it fails or is aborted."""

    def __init__(self, rollout: Rollout):
        self.rollout = rollout
        self.app, self.live, self.history, self.state = rollout.app, rollout.live, rollout.history, rollout.state

    async def run(self, n: int, config: dict, settings: AppSettings, current: dict, cs: CanarySettings,
                  scope: str, model: str) -> None:
        """Canary of release ``n`` (``config``, recorded as ``deploying`` in ``scope``) for ``model`` against
        ``current`` (the running config composed from the history, {n, config})."""
        clock, wait_ready, ingress = self.rollout.clock, self.rollout.wait_ready, [self.app]
        t0 = clock()
        deployment = model_deployment(settings, model)
        name = canary_name(self.app, deployment)
        self.state.canaries[scope] = c = CanaryRun(n, cs, scope, model, name)
        try:
            # 1. The canary's LLM next to the current release (which is not touched); no traffic yet.
            self.live.extra[name] = canary_application(config, self.app, deployment, cs.share)
            started, _ = await self.live.apply()
            await wait_ready(started, settings, [name])
            # 2. Route the share to it, then compare both sides over the window.
            self.live.routes[model] = {"app": name, "deployment": deployment, "share": cs.share, "release": n}
            started, _ = await self.live.apply()
            await wait_ready(started, settings, ingress)
            c.phase, c.window_started_at = "window", time.time()
            verdict = await self.judge_window(c, settings, cs, deployment)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - every failure (or an abort) removes it
            if isinstance(exc, asyncio.CancelledError):
                reason = "aborted by a rollback request"
            else:
                reason = str(exc) if isinstance(exc, ReleaseFailed) else f"{type(exc).__name__}: {exc}"
            logger.warning("canary release %d failed: %s", n, reason)
            c.phase = "rolling back"
            try:
                await self.remove(model, name, settings)
                self.history.finish(n, "failed", f"canary rolled back: {reason}; release {current['n']} served "
                                    f"throughout, the canary was removed {clock() - t0:.1f}s after the deploy")
            except (Exception, asyncio.CancelledError) as exc2:  # noqa: BLE001 - retried by the actor's clean-up
                self.history.finish(n, "failed", f"canary rolled back: {reason}; removing it failed: "
                                    f"{type(exc2).__name__}: {exc2}")
                self.state.leftover_canary = True
            finally:
                self.state.canaries.pop(scope, None)
                self.state.deploying.pop(scope, None)
            return
        # 3. Promote: all traffic back to the current release, then the release rolls out in place.
        logger.info("canary release %d passed: %s", n, verdict)
        c.phase = "promoting"
        try:
            self.live.routes.pop(model, None)
            started, _ = await self.live.apply()
            await wait_ready(started, settings, ingress)
        except Exception as exc:  # noqa: BLE001 - the rollout below removes the canary application anyway
            logger.warning("routing back from canary %d: %s", n, exc)
        self.live.extra.pop(name, None)  # the rollout's apply removes it
        self.state.canaries.pop(scope, None)
        await self.rollout.run(n, config, settings, current, prefix=f"canary passed ({verdict}); promoted and ",
                               scope=scope)

    async def judge_window(self, c: CanaryRun, settings: AppSettings, cs: CanarySettings, deployment: str) -> str:
        """Probe the canary and judge both sides' counts until a verdict; returns the reason it passed,
        raises ReleaseFailed with the reason it failed."""
        clock, sleep = self.rollout.clock, self.rollout.sleep
        end = clock() + cs.window_s
        failures = 0
        while True:
            await sleep(1.0)
            try:
                await asyncio.wait_for(self.rollout.gateway.probe(c.application, deployment),
                                       settings.ingress.health_timeout_s)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - any failure of a probe counts
                failures += 1
                if failures >= settings.releases.health_failures:
                    raise ReleaseFailed(f"the canary's {deployment} failed its health check: {type(exc).__name__}: "
                                        f"{str(exc)[:300]}") from None
            final = clock() >= end
            if final:
                await sleep(2.5)  # the ingress replicas report every 2 s: take the window's last counts
            verdict, reason = judge(c.stats[PRIMARY], c.stats[CANARY], cs, final)
            if verdict == "fail":
                raise ReleaseFailed(reason)
            if verdict == "pass":
                return reason

    async def remove(self, model: str | None, name: str | None, settings: AppSettings) -> None:
        """Route ``model``'s traffic back to the current release, then remove the canary application ``name``
        (both None: every canary Serve runs, left by an earlier controller)."""
        details = await asyncio.to_thread(self.rollout.gateway.details)
        left = {a: d.get("deployed_app_config") for a, d in details["applications"].items()
                if is_canary_app(self.app, a) and (name is None or a == name)}
        try:
            if model is None:
                routed = bool(self.live.routes)
                self.live.routes.clear()
            else:
                routed = self.live.routes.pop(model, None) is not None
            if routed or name is None:
                # The canary keeps serving what the ingress still sends it until the ingress is reconfigured.
                self.live.extra.update({a: cfg for a, cfg in left.items() if cfg})
                started, _ = await self.live.apply()
                await self.rollout.wait_ready(started, settings, [self.app])
        finally:
            # Removed even when routing back could not be confirmed: nothing may keep serving from it.
            gone = list(left) if name is None else [name]
            for a in gone:
                self.live.extra.pop(a, None)
            started, _ = await self.live.apply()
        await self.rollout.wait_ready(started, settings, [self.app])
        for a in gone:  # its engine's resources are free for the next canary once Serve has deleted it
            await self.rollout.wait_gone(a, settings, [d["name"] for d in (left.get(a) or {}).get("deployments") or ()])
