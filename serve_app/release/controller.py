"""The release controller: deploy → watch → automatic rollback, scale, history. The seed's deploy_update
and scale_service.

It runs as one detached Ray actor per cluster (created by ``serve-app run``, which records the config it
started from as the first release, or on first use by the ingress), outside the Serve applications it
updates, so it keeps watching while the app's replicas restart. A release is a whole plain Serve config; it is
applied expanded into one Serve application per component (serve_app/config/apps.py) with Serve's own
in-place update (``deploy_apps``), exactly as ``serve deploy`` of the expanded form would, so Serve decides
what restarts: a change of a component's ``args`` rebuilds that component's application, while a change of
deployment options only (replicas, autoscaling bounds, ``user_config``) restarts nothing. The release number
reaches the ingress through its ``user_config``.

Deploy flow: validate, and refuse code changes the running config does not allow (release/guard.py;
nothing is touched if the release is invalid or refused) → record it (status ``deploying``) →
apply → watch Serve's status until every application is RUNNING with every deployment HEALTHY, failing fast on
a replica that cannot start → probe every component's health for ``releases.watch_s`` → ``good``; on any
failure, redeploy the last good release and record both outcomes.

Canary flow (``deploy(..., canary={...})``): the new release's LLM is started as a second application
(``<app>-canary``, ``build_llm``) next to the running release, which is not touched → once it is healthy,
the ingress is told (``user_config``) to send ``share`` of LLM requests to it → both sides' counts, reported
by the ingress replicas, are compared over ``window_s`` (``canary.judge``) → pass: routing back to the current
release, then the whole new release rolls out as above (with its own watch and rollback); fail: routing back,
the canary application removed, the release recorded as failed — the current release served throughout.

The parts: what a release applies is planned in release/plan.py (pure), Serve is reached only through
release/gateway.py, the two flows are the state machines of release/rollout.py, and the history is
release/history.py. Here they are wired together: ``Releases`` holds the operations the admin routes call
(and the unit tests drive with a fake gateway), ``ReleaseController`` is the same as the Ray actor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import ray

from serve_app.config import paths
from serve_app.config.apps import code_version
from serve_app.config.components import component_app
from serve_app.config.release_settings import CanarySettings
from serve_app.config.secrets import redacted
from serve_app.errors import AppError, Conflict, NotFound, ServiceUnavailable, unwrap
from serve_app.release.canary import CANARY, PRIMARY
from serve_app.release.gateway import RayServeGateway, ServeGateway
from serve_app.release.guard import check_release
from serve_app.release.history import History
from serve_app.release.plan import (
    adapter_list,
    app_entry,
    app_settings,
    canary_name,
    canary_settings,
    changed,
    first_release_baseline,
    release_config,
    scaled,
    stored_config,
    with_adapter,
    without_adapter,
)
from serve_app.release.rollout import CanaryRollout, Clock, ReleaseState, Rollout, Sleep

logger = logging.getLogger("ray.serve")

CONTROLLER_NAME = "serve_app_release_controller"
NAMESPACE = "serve_app"


class Releases:
    """The release controller's operations on one application, over a history and a Serve gateway."""

    def __init__(self, app_name: str, history: History, gateway: ServeGateway, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep):
        self.app = app_name
        self.canary_app = canary_name(app_name)
        self.history = history
        self.gateway = gateway
        # The deploy, canary or clean-up running in the background (one at a time).
        self.background: asyncio.Task | None = None
        for r in self.history.list():
            if r["status"] == "deploying":
                # This actor restarted mid-deploy (Ray restarts it): the outcome was never observed.
                self.history.finish(r["n"], "interrupted", "the release controller restarted during the deploy")
        # The running config is the history's last good release: ``serve-app run`` records the config it started
        # from (``started_from``). An app deployed another way (``serve deploy`` of the expanded form) has none
        # until its first release; nothing is reconstructed from what Serve reports.
        first = self.history.last_good()
        self.state = ReleaseState(serving=first["n"] if first else None)
        self.rollout = Rollout(app_name, gateway, history, self.state, clock, sleep)
        self.canary_rollout = CanaryRollout(self.rollout)
        # A canary left behind by a controller that died mid-window is removed on the first call.
        self.state.leftover_canary = self.canary_app in self.gateway.details()["applications"]

    def _last_good(self, before: int | None = None) -> dict[str, Any] | None:
        """The last good release, its config migrated for a deploy."""
        r = self.history.last_good(before=before)
        return r and {**r, "config": stored_config(r)}

    def _current(self) -> dict[str, Any]:
        """The last good release, its config migrated (ServiceUnavailable while the history holds none: an app
        started from the expanded form before its first release)."""
        current = self._last_good()
        if current is None:
            raise ServiceUnavailable("the release history holds no release yet: deploy the app's plain config as its "
                                     "first release (POST /admin/releases, or serve-app deploy CONFIG)")
        return current

    def _get(self, n: int) -> dict[str, Any]:
        r = self.history.get(n)
        if r is None:
            raise NotFound(f"release {n} does not exist", "release")
        return r

    def _clean_up(self) -> None:
        """Start removing a canary left behind (called from every async entry point, /healthz included)."""
        if self.state.leftover_canary and (self.background is None or self.background.done()):
            self.state.leftover_canary = False
            self.background = asyncio.get_running_loop().create_task(self._remove_leftover())

    async def _remove_leftover(self) -> None:
        try:
            await self.canary_rollout.remove(self._current())
            logger.info("removed a canary left by an earlier release controller")
        except Exception:
            logger.exception("removing a leftover canary failed; retrying on the next call")
            self.state.leftover_canary = True

    # -- the public operations (called by the ingress's admin routes) --------------------------------

    def started_from(self, config: dict, actor: str = "serve-app run") -> int:
        """Record ``config`` (a whole plain config) as a good release, the one Serve was just started with,
        unless it is the last good release already; returns its number."""
        full, _ = release_config(None, config, self.app)
        last = self._last_good()
        if last is not None and last["config"] == full:
            return last["n"]
        what = changed(app_entry(last["config"], self.app) if last else None, app_entry(full, self.app))
        n = self.history.add(actor=actor, kind="initial", note="the config the app was started from", config=full,
                             changed=what, status="good")
        self.state.serving = n
        logger.info("release controller: recorded the config the app was started from as release %d", n)
        return n

    async def status(self) -> dict[str, Any]:
        self._clean_up()
        details = await asyncio.to_thread(self.gateway.details)
        # The release's applications: the ingress's (named like the release's application) and the other
        # components' and a canary's, named after it (serve_app/config/apps.py).
        apps = {name: a for name, a in details["applications"].items()
                if name == self.app or name.startswith(self.app + "-")}
        current = self.history.last_good()
        deployments = {
            name: {
                "status": d["status"],
                "status_trigger": d.get("status_trigger"),
                "message": d.get("message") or None,
                "target_replicas": d.get("target_num_replicas"),
                "running_replicas": sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING"),
                "application": app_name,
                # Which replicas run: a release shows here what it replaced and what it left alone.
                "replicas": [{"id": r.get("replica_id"), "state": r.get("state"), "pid": r.get("pid"),
                              "started_at": r.get("start_time_s")} for r in d.get("replicas", [])],
            }
            for app_name, app in apps.items() if app_name != self.canary_app
            for name, d in (app.get("deployments") or {}).items()
        }
        applications = {
            name: {"status": a.get("status"), "version": code_version(a.get("deployed_app_config") or {}),
                   "last_deployed_time_s": a.get("last_deployed_time_s"),
                   "deployments": sorted(a.get("deployments") or {})}
            for name, a in sorted(apps.items())
        }
        canary = None
        if self.state.canary is not None:
            c = self.state.canary
            canary = {"release": c.n, "application": self.canary_app, "share": c.settings.share,
                      "window_s": c.settings.window_s, "phase": c.phase, "window_started_at": c.window_started_at,
                      PRIMARY: c.stats[PRIMARY].summary(), CANARY: c.stats[CANARY].summary()}
        statuses = [a.get("status") for name, a in apps.items() if name != self.canary_app]
        return {
            "application": self.app,
            # RUNNING when every application of the release runs, else the first that does not say so.
            "status": next((st for st in statuses if st != "RUNNING"), "RUNNING") if statuses else None,
            "applications": applications,
            # The release whose configuration Serve runs; last good is the one a rollback would go back to
            # (they differ while a release is deploying or after a failed rollback).
            "current_release": self.state.serving,
            "last_good_release": current["n"] if current else None,
            "deploying": self.state.deploying,
            "canary": canary,
            "deployments": deployments,
        }

    async def health(self) -> dict[str, Any]:
        """For the ingress's /healthz: answers while the actor runs; the history database must be readable."""
        self._clean_up()
        last = self.history.last_good()
        return {"last_good_release": last["n"] if last else None, "deploying": self.state.deploying,
                "canary": self.state.canary.phase if self.state.canary else None}

    def canary_report(self, release: int, data: dict[str, Any]) -> None:
        """Counts from one ingress replica since its last report (see canary.CanaryRouter.flush)."""
        c = self.state.canary
        if c is None or c.n != release or c.phase != "window":
            return
        for arm in (PRIMARY, CANARY):
            c.stats[arm].add(data.get(arm) or {})

    def releases(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "config"} for r in self.history.list()]

    def release(self, n: int) -> dict[str, Any]:
        r = self._get(n)
        # Rows written before configs had to name their secrets may hold values: never served back.
        return {**r, "config": redacted(r["config"])}

    def audit(self, actor: str, action: str, allowed: bool, detail: str | None = None) -> None:
        current = self.history.last_good()
        keep = app_settings(current["config"], self.app).releases if current else None
        self.history.audit(actor, action, allowed, detail, max_rows=keep.audit_max_rows if keep else None,
                           max_age_s=keep.audit_max_age_days * 86400 if keep else None)

    def audit_log(self) -> list[dict[str, Any]]:
        return self.history.audit_log()

    async def deploy(self, config: dict, actor: str, note: str | None = None, kind: str = "deploy",
                     canary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate and start deploying a release. Returns its number at once; the outcome is in history.

        ``canary`` (a possibly empty mapping of CanarySettings fields overriding the release's own
        ``releases.canary``) deploys it as a canary first."""
        self._clean_up()
        if self.background is not None and not self.background.done() and self.state.deploying is None:
            await asyncio.shield(self.background)  # a leftover canary being removed: a deploy waits for it
        if self.background is not None and not self.background.done():
            raise Conflict(f"release {self.state.deploying} is still being deployed", "release")
        current = self._last_good()
        base = current["config"] if current else None
        full, new_settings = release_config(base, config, self.app)
        try:
            # Data only, unless the running config allows code changes; with no release recorded yet, against
            # the defaults (which allow none).
            check_release(base or first_release_baseline(full, self.app), full, self.app)
        except AppError as exc:
            await asyncio.to_thread(Releases.audit, self, actor, f"{kind} refused", False, exc.message[:500])
            raise
        what = changed(app_entry(base, self.app) if base else None, app_entry(full, self.app))
        against: tuple[dict[str, Any], CanarySettings] | None = None  # a canary's current release and settings
        if canary is not None:
            cs = canary_settings(canary, new_settings, current["config"] if current else None, self.app)
            if current is None:  # canary_settings refuses a canary without a current release
                raise RuntimeError("a canary needs a current release")
            against, kind = (current, cs), "canary"
        n = await asyncio.to_thread(self.history.add, actor=actor, kind=kind, note=note, config=full, changed=what,
                                    status="deploying")
        self.state.deploying = n
        if against is not None:
            work = self.canary_rollout.run(n, full, new_settings, *against)
        else:
            work = self.rollout.run(n, full, new_settings, current)
        self.background = asyncio.get_running_loop().create_task(work)
        out = {"release": n, "status": "deploying", "changed": what}
        if against is not None:
            out["canary"] = against[1].model_dump()
        return out

    async def rollback(self, actor: str, to: int | None = None) -> dict[str, Any]:
        task = self.background
        if to is None and self.state.canary is not None and task is not None and not task.done():
            # A canary is out: rolling back means stopping it (the current release never changed).
            n = self.state.canary.n
            task.cancel()
            await asyncio.wait([task])
            return {"release": n, "status": self._get(n)["status"], "changed": [], "aborted_canary": True}
        if to is None:
            current = self.history.last_good()
            target = self.history.last_good(before=current["n"]) if current else None
            if target is None:
                raise NotFound("there is no earlier good release to roll back to", "release")
        else:
            target = self._get(to)
        return await self.deploy(stored_config(target), actor, note=f"rollback to release {target['n']}",
                                 kind="rollback")

    # -- LoRA adapters: each load and unload is a release (so a rollback undoes it) that restarts nothing -----

    def adapters(self) -> list[dict[str, str]]:
        current = self._last_good()
        return adapter_list(app_settings(current["config"], self.app)) if current else []

    async def load_adapter(self, model: str | None, name: str, folder: str, actor: str) -> dict[str, Any]:
        """Add an adapter to a model: checked and loaded once on one of its replicas first (a bad one is
        refused with the reason and nothing is recorded), then deployed as a release."""
        current = self._current()
        new_app, model = with_adapter(current["config"], self.app, model, name, folder)
        _, settings = release_config(current["config"], {"applications": [new_app]}, self.app)  # names, counts
        deployment = next(d for d, m in settings.served_models().items() if m.model.name == model)
        try:
            trial = await asyncio.wait_for(self.gateway.call(component_app(self.app, deployment), deployment,
                                                             "trial_adapter", folder),
                                           settings.releases.ready_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the replica's own error (a 4xx) goes back to the caller
            cause = unwrap(exc)
            if isinstance(cause, AppError):
                raise cause from None
            raise ServiceUnavailable(f"the trial load on {deployment} failed: {type(cause).__name__}") from None
        out = await self.deploy({"applications": [new_app]}, actor, note=f"load adapter {name} ({folder}) on {model}",
                                kind="adapter-load")
        return {**out, "adapter": {"name": name, "model": model, "folder": folder, **trial}}

    async def unload_adapter(self, name: str, actor: str) -> dict[str, Any]:
        current = self._current()
        new_app, model = without_adapter(current["config"], self.app, name)
        out = await self.deploy({"applications": [new_app]}, actor, note=f"unload adapter {name} from {model}",
                                kind="adapter-unload")
        return {**out, "adapter": {"name": name, "model": model}}

    async def scale(self, deployment: str, replicas: int | None, factor: float | None, actor: str) -> dict[str, Any]:
        new_app, what = scaled(self._current()["config"], self.app, deployment, replicas, factor)
        return await self.deploy({"applications": [new_app]}, actor, note=f"scale {what}", kind="scale")


@ray.remote(num_cpus=0, max_restarts=-1)
class ReleaseController(Releases):
    """``Releases`` as the cluster's detached actor: the history in the state directory, the Serve it runs in."""

    def __init__(self, app_name: str, state_dir: str | None = None):
        super().__init__(app_name, History(state_dir or paths.state_dir()), RayServeGateway())

    # An async actor runs its plain methods on its event loop: those that read or write SQLite run in a
    # thread instead, so a slow disk never holds up /healthz's probe or a canary's counts. They become async,
    # which ``Releases`` does not promise: the actor is called only through its handle (every call is
    # awaited there), and ``Releases`` itself calls them on the class (``Releases.audit``), never on self.
    async def releases(self) -> list[dict[str, Any]]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.releases, self)

    async def release(self, n: int) -> dict[str, Any]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.release, self, n)

    async def audit(  # type: ignore[override]  # async on the actor: above
        self, actor: str, action: str, allowed: bool, detail: str | None = None
    ) -> None:
        await asyncio.to_thread(Releases.audit, self, actor, action, allowed, detail)

    async def audit_log(self) -> list[dict[str, Any]]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.audit_log, self)

    async def adapters(self) -> list[dict[str, str]]:  # type: ignore[override]  # async on the actor: above
        return await asyncio.to_thread(Releases.adapters, self)

    async def started_from(  # type: ignore[override]  # async on the actor: above
        self, config: dict, actor: str = "serve-app run"
    ) -> int:
        return await asyncio.to_thread(Releases.started_from, self, config, actor)


def get_controller(app_name: str, env_vars: dict[str, str] | None = None):
    """The cluster's release controller, created on first use (``env_vars``: its environment's additions, the
    app's own runtime_env variables when ``serve-app run`` creates it; a replica's actors inherit its own)."""
    # mypy ignores class decorators: it sees the plain class where @ray.remote made an actor class.
    actor_class = cast("ray.actor.ActorClass", ReleaseController)
    options: dict[str, Any] = {"name": CONTROLLER_NAME, "namespace": NAMESPACE, "lifetime": "detached",
                               "get_if_exists": True}
    if env_vars:
        options["runtime_env"] = {"env_vars": dict(env_vars)}
    return actor_class.options(**options).remote(app_name)
