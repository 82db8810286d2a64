"""The release controller: deploy → watch → automatic rollback, scale, history. The seed's deploy_update
and scale_service, per model and per component.

It runs as one detached Ray actor per cluster (release/actor.py), outside the Serve applications it updates,
so it keeps watching while the app's replicas restart. A release is a whole plain Serve config with a
scope (release/scopes.py): the whole application, one model (``model:<served name>``: its engine, source,
replicas, autoscaling, LoRA) or one component (``component:retrieval|agent|ingress``). It is applied expanded
into one Serve application per component (serve_app/config/apps.py) with Serve's own in-place update
(``deploy_apps``), exactly as ``serve deploy`` of the expanded form would, so Serve decides what restarts: a
change of a component's ``args`` rebuilds that component's application, a change of deployment options only
(replicas, autoscaling bounds, ``user_config``) restarts nothing. The release number reaches the ingress
through its ``user_config``.

Releases of different scopes run at once (a second one of a scope already deploying, or anything next to a
whole-app release, is a 409); each applies its scope's section of the one live config (release/live.py), waits
for the applications it changed, watches its scope's deployments and, when it fails, puts back its scope's
section alone. The running config is the history's good releases composed (``scopes.compose``).

Deploy flow: validate, refuse a scoped release that changes anything outside its scope, and refuse code
changes the running config does not allow (release/guard.py; nothing is touched if the release is invalid or
refused) → record it (status ``deploying``, with its scope) → apply → watch Serve's status until the
applications it changed are RUNNING with every deployment HEALTHY, failing fast on a replica that cannot start
→ probe the scope's components for ``releases.watch_s`` → ``good``; on any failure, redeploy the scope's last
good section and record both outcomes. Adding a model starts its application before the ingress routes to
it; removing one stops the routing first, lets the old ingress replicas finish their streams, then deletes it.

Canary flow (``deploy(..., canary={...})``, release/canary_rollout.py): the release's LLM for one model (the
scope's, or the first model's for a whole-app release) is started as an application of its own next to the
running release → once healthy, the ingress sends ``share`` of that model's requests to it → both sides'
counts, reported by the ingress replicas, are judged over ``window_s`` → pass: routing back, then the release
rolls out as above; fail: routing back, the canary removed, the release recorded as failed. Canaries of two
models run at once, each judged on its own model's traffic.

Here the parts of release/ are wired together: ``Releases`` holds the operations the admin routes call (and the
unit tests drive with a fake gateway); ``ReleaseController`` (release/actor.py) is the same as the Ray actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from typing import Any

from serve_app.config.release_settings import CanarySettings
from serve_app.config.secrets import redacted
from serve_app.errors import AppError, Conflict, InvalidRequest, NotFound, ServiceUnavailable
from serve_app.release.canary import CANARY, PRIMARY
from serve_app.release.canary_rollout import CanaryRollout
from serve_app.release.gateway import ServeGateway
from serve_app.release.guard import check_release
from serve_app.release.history import History
from serve_app.release.live import Live, spliced, with_entry
from serve_app.release.plan import (
    app_entry,
    app_settings,
    canary_settings,
    changed,
    first_release_baseline,
    is_canary_app,
    release_config,
    scoped_config,
    stored_config,
)
from serve_app.release.resources import ResourceReleases
from serve_app.release.rollout import Clock, ReleaseState, Rollout, Sleep
from serve_app.release.scopes import (
    APP,
    MODEL,
    check_removal,
    compose,
    describe,
    join,
    model_of,
    previous_section,
    scope_of,
    sections,
    without,
)
from serve_app.release.status import status as release_status

logger = logging.getLogger("ray.serve")



class Releases(ResourceReleases):
    """The release controller's operations on one application, over a history and a Serve gateway."""

    def __init__(self, app_name: str, history: History, gateway: ServeGateway, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep):
        self.app = app_name
        self.history = history
        self.gateway = gateway
        # Scope -> its deploy or canary running in the background (one per scope; a whole-app one alone).
        self.tasks: dict[str, asyncio.Task] = {}
        self.reserved: set[str] = set()  # scopes whose release is being checked and recorded
        self.cleanup: asyncio.Task | None = None  # a leftover canary being removed
        self.background: asyncio.Task | None = None  # the newest background task (what a caller may wait for)
        self._composed: tuple[tuple[int, int], dict[str, Any] | None] | None = None  # _good()'s, by good_version
        for r in self.history.list():
            if r["status"] == "deploying":
                # This actor restarted mid-deploy (Ray restarts it): the outcome was never observed.
                self.history.finish(r["n"], "interrupted", "the release controller restarted during the deploy")
        # The running config is the history's good releases composed: ``serve-app run`` records the config it
        # started from (``started_from``). An app deployed another way (``serve deploy`` of the expanded form)
        # has none until its first release; nothing is reconstructed from what Serve reports.
        good = self._good()
        self.state = ReleaseState(serving=good["n"] if good else None)
        self.live = Live(app_name, gateway, good["config"] if good else None, good["n"] if good else None)
        self.rollout = Rollout(app_name, self.live, history, self.state, self._good, clock, sleep)
        self.canary_rollout = CanaryRollout(self.rollout)
        # Canaries left behind by a controller that died mid-window are removed on the first call.
        self.state.leftover_canary = any(is_canary_app(app_name, a) for a in self.gateway.details()["applications"])

    def _good(self) -> dict[str, Any] | None:
        """The running config ({n: the newest good release, config}), composed from the good releases, each
        migrated for a deploy (None: the history holds no release). Kept until a release turns good."""
        version = self.history.good_version()
        if self._composed is None or self._composed[0] != version:
            rows = [{**r, "config": stored_config(r)} for r in self.history.good()]
            config = compose(rows, lambda c: app_entry(c, self.app), lambda c, e: with_entry(c, self.app, e))
            self._composed = (version, {"n": rows[-1]["n"], "config": config} if rows else None)
        good = self._composed[1]
        return good and {**good, "config": copy.deepcopy(good["config"])}

    def _current(self) -> dict[str, Any]:
        """``_good()``, or ServiceUnavailable while the history holds no release (an app started from the
        expanded form before its first release)."""
        current = self._good()
        if current is None:
            raise ServiceUnavailable("the release history holds no release yet: deploy the app's plain config as its "
                                     "first release (POST /admin/releases, or serve-app deploy CONFIG)")
        return current

    def _get(self, n: int) -> dict[str, Any]:
        r = self.history.get(n)
        if r is None:
            raise NotFound(f"release {n} does not exist", "release")
        return r

    def _busy(self) -> set[str]:
        """The scopes with a release deploying (or being prepared: between its checks and its start)."""
        return {scope for scope, t in self.tasks.items() if not t.done()} | self.reserved

    @contextlib.contextmanager
    def _reserve(self, scope: str):
        """Hold ``scope`` while a release of it is checked and recorded (the awaits there let another call in):
        409 when ``scope`` has a release deploying, or a whole-app one runs, or (for a whole-app release)
        any release runs."""
        busy = [s for s in self._busy() if s in (scope, APP) or scope == APP]
        if busy:
            what = ", ".join(f"release {self.state.deploying.get(s, '(starting)')} ({describe(s)})" for s in busy)
            param = "model" if scope.startswith(MODEL) else "component" if scope != APP else "release"
            raise Conflict(f"{what} still being deployed; a release of {describe(scope)} waits for it", param)
        self.reserved.add(scope)
        try:
            yield
        finally:
            self.reserved.discard(scope)

    def _start(self, scope: str, work) -> None:
        self.background = self.tasks[scope] = asyncio.get_running_loop().create_task(work)

    def _clean_up(self) -> None:
        """Start removing canaries left behind (called from every async entry point, /healthz included)."""
        if self.state.leftover_canary and (self.cleanup is None or self.cleanup.done()) and not self._busy():
            self.state.leftover_canary = False
            self.background = self.cleanup = asyncio.get_running_loop().create_task(self._remove_leftover())

    async def _remove_leftover(self) -> None:
        try:
            await self.canary_rollout.remove(None, None, app_settings(self._current()["config"], self.app))
            logger.info("removed a canary left by an earlier release controller")
        except Exception:
            logger.exception("removing a leftover canary failed; retrying on the next call")
            self.state.leftover_canary = True

    # -- the public operations (called by the ingress's admin routes) --------------------------------

    def started_from(self, config: dict, actor: str = "serve-app run") -> int:
        """Record ``config`` (a whole plain config) as a good release, the one Serve was just started with,
        unless it is the running config already; returns its number."""
        full, _ = release_config(None, config, self.app)
        last = self._good()
        if last is not None and last["config"] == full:
            return last["n"]
        what = changed(app_entry(last["config"], self.app) if last else None, app_entry(full, self.app))
        n = self.history.add(actor=actor, kind="initial", note="the config the app was started from", config=full,
                             changed=what, status="good")
        self.state.serving = self.live.release = n
        self.live.config = full
        logger.info("release controller: recorded the config the app was started from as release %d", n)
        return n

    async def status(self) -> dict[str, Any]:
        self._clean_up()
        details = await asyncio.to_thread(self.gateway.details)
        good = await asyncio.to_thread(self._good)
        return release_status(self.app, details, self.state, good, await asyncio.to_thread(self.history.good))

    async def health(self) -> dict[str, Any]:
        """For the ingress's /healthz: answers while the actor runs; the history database must be readable."""
        self._clean_up()
        last = self.history.last_good()
        canary = next(iter(self.state.canaries.values()), None)
        return {"last_good_release": last["n"] if last else None,
                "deploying": max(self.state.deploying.values(), default=None),
                "canary": canary.phase if canary else None}

    def canary_report(self, release: int, data: dict[str, Any]) -> None:
        """Counts from one ingress replica since its last report (see canary.CanaryRouter.flush)."""
        c = next((c for c in self.state.canaries.values() if c.n == release), None)
        if c is None or c.phase != "window":
            return
        for arm in (PRIMARY, CANARY):
            c.stats[arm].add(data.get(arm) or {})

    def config(self) -> dict[str, Any]:
        """The running config, composed from the good releases of every scope (what a new release of one scope
        starts from): {release: the newest good one, config}."""
        current = self._current()
        return {"release": current["n"], "config": redacted(current["config"])}

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
                     canary: dict[str, Any] | None = None, model: str | None = None, component: str | None = None,
                     *, scope: str | None = None) -> dict[str, Any]:
        """Validate and start deploying a release of the whole app, or of one ``model`` or ``component`` (its
        ``scope``). Returns its number at once; the outcome is in history.

        ``canary`` (a possibly empty mapping of CanarySettings fields overriding the release's own
        ``releases.canary``) deploys it as a canary first."""
        self._clean_up()
        if self.cleanup is not None and not self.cleanup.done():
            await asyncio.shield(self.cleanup)  # a leftover canary being removed: a deploy waits for it
        scope = scope or scope_of(model, component)
        with self._reserve(scope):
            return await self._deploy(scope, config, actor, note, kind, canary)

    async def _deploy(self, scope: str, config: dict, actor: str, note: str | None, kind: str,
                      canary: dict[str, Any] | None) -> dict[str, Any]:
        current = await asyncio.to_thread(self._good)
        base = current["config"] if current else None
        try:
            if scope != APP:
                if base is None:
                    raise Conflict("a release of one model or component needs a running release first: deploy the "
                                   "whole app's config (POST /admin/releases without a scope)", "release")
                config = scoped_config(base, self.live.config, config, self.app, scope)
            full, new_settings = release_config(base, config, self.app)
            # Data only, unless the running config allows code changes; with no release recorded yet, against
            # the defaults (which allow none).
            check_release(base or first_release_baseline(full, self.app), full, self.app)
            cs: CanarySettings | None = None
            if canary is not None:
                if scope != APP and model_of(scope) is None:
                    raise InvalidRequest("a canary tries a model's release: scope it to a model", "canary")
                cs = canary_settings(canary, new_settings, base, self.app, model_of(scope))
                kind = "canary"
        except AppError as exc:
            await asyncio.to_thread(Releases.audit, self, actor, f"{kind} refused", False, exc.message[:500])
            raise
        what = changed(app_entry(base, self.app) if base else None, app_entry(full, self.app))
        n = await asyncio.to_thread(self.history.add, actor=actor, kind=kind, note=note, config=full, changed=what,
                                    status="deploying", scope=scope)
        self.state.deploying[scope] = n
        if cs is not None and current is not None:  # canary_settings refuses a canary without a current release
            model_name = model_of(scope) or new_settings.model_names()[0]
            self._start(scope, self.canary_rollout.run(n, full, new_settings, current, cs, scope, model_name))
        else:
            self._start(scope, self.rollout.run(n, full, new_settings, current, scope=scope))
        out = {"release": n, "status": "deploying", "changed": what, "scope": scope}
        if cs is not None:
            out["canary"] = cs.model_dump()
        return out

    async def remove_model(self, model: str, actor: str) -> dict[str, Any]:
        """Remove a served model, as a release of its scope: routing to it stops first, then its streams
        drain, then its application is deleted (release/rollout.py ``remove_model``)."""
        self._clean_up()
        scope = MODEL + model
        with self._reserve(scope):
            current = await asyncio.to_thread(self._current)
            try:
                check_removal(app_settings(current["config"], self.app), model)
                entry = without(app_entry(current["config"], self.app), scope)
                full, new_settings = release_config(current["config"], {"applications": [entry]}, self.app)
            except AppError as exc:
                await asyncio.to_thread(Releases.audit, self, actor, "remove-model refused", False, exc.message[:500])
                raise
            n = await asyncio.to_thread(self.history.add, actor=actor, kind="remove-model", note=f"remove {model}",
                                        config=full, changed=[scope], status="deploying", scope=scope)
            self.state.deploying[scope] = n
            self._start(scope, self.rollout.remove_model(n, full, new_settings, current, model))
        return {"release": n, "status": "deploying", "changed": [scope], "scope": scope}

    async def rollback(self, actor: str, to: int | None = None, model: str | None = None,
                       component: str | None = None) -> dict[str, Any]:
        """Back to release ``to`` (None: the previous one), of the whole app or of one scope: a scoped
        rollback takes its scope's section from there. While a canary of the scope is out, it is stopped."""
        scope = scope_of(model, component)
        canaries = self.state.canaries
        canary_scope = scope if scope in canaries else next(iter(canaries)) if scope == APP and len(canaries) == 1 \
            else None
        task = self.tasks.get(canary_scope) if canary_scope else None
        if to is None and canary_scope is not None and task is not None and not task.done():
            # A canary is out: rolling back means stopping it (the current release never changed). One already
            # leaving (rolled back, or promoting) is not stopped again: its own outcome is waited for.
            c = canaries[canary_scope]
            if c.phase in ("starting", "window"):
                task.cancel()
            await asyncio.wait([task])
            return {"release": c.n, "status": self._get(c.n)["status"], "changed": [], "aborted_canary": True}
        if to is None and scope == APP:
            newest = self.history.last_good()
            before = self.history.last_good(before=newest["n"]) if newest else None
            if before is None:
                raise NotFound("there is no earlier good release to roll back to", "release")
            to = before["n"]
        if to is None:
            n, config = await asyncio.to_thread(self._previous, scope)
        else:
            n, config = to, await asyncio.to_thread(self._config_at, to)
            if scope != APP:
                if scope not in sections(app_entry(config, self.app)):
                    raise NotFound(f"release {to} did not serve {describe(scope)}", "release")
                config = spliced(self._current()["config"], self.app, scope, config)
        return await self.deploy(config, actor, note=f"rollback of {describe(scope)} to release {n}", kind="rollback",
                                 scope=scope)

    def _config_at(self, n: int) -> dict:
        """The config that ran once release ``n`` was deployed: the good releases up to it composed, with ``n``
        itself on top (a scoped release's stored config holds only the good config of when it started)."""
        target = self._get(n)
        rows = [{**r, "config": stored_config(r)} for r in self.history.good(whole=True) if r["n"] < n]
        rows.append({**target, "config": stored_config(target)})
        config = compose(rows, lambda c: app_entry(c, self.app), lambda c, e: with_entry(c, self.app, e))
        assert config is not None  # rows holds the target at least
        return config

    def _previous(self, scope: str) -> tuple[int, dict]:
        """The release whose section of ``scope`` came before the running one, and the running config with
        that section."""
        rows = [{**r, "config": stored_config(r)} for r in self.history.good(whole=True)]
        found = previous_section(rows, scope, lambda c: app_entry(c, self.app), lambda c, e: with_entry(c, self.app, e))
        if found is None:
            served = scope in sections(app_entry(self._current()["config"], self.app))
            raise NotFound(f"there is no earlier good release of {describe(scope)} to roll back to" if served else
                           f"{describe(scope)} is not served", "release" if served else "model")
        n, section = found
        good = self._current()["config"]
        return n, with_entry(good, self.app, join({**sections(app_entry(good, self.app)), scope: section}))
