"""The release controller: deploy → watch → automatic rollback, scale, history. The seed's deploy_update
and scale_service, per model and per component.

It runs as one detached Ray actor per cluster (created by ``serve-app run``, which records the config it
started from as the first release, or on first use by the ingress), outside the Serve applications it
updates, so it keeps watching while the app's replicas restart. A release is a whole plain Serve config with a
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

The parts: what a release applies is planned in release/plan.py and release/scopes.py (pure), Serve is reached
only through release/gateway.py, the state machines are release/rollout.py and release/canary_rollout.py, the
history is release/history.py and /admin/status is release/status.py. Here they are wired together:
``Releases`` holds the operations the admin routes call (and the unit tests drive with a fake gateway),
``ReleaseController`` (release/actor.py) is the same as the Ray actor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from serve_app.config.components import component_app
from serve_app.config.release_settings import CanarySettings
from serve_app.config.secrets import redacted
from serve_app.errors import AppError, Conflict, InvalidRequest, NotFound, ServiceUnavailable, unwrap
from serve_app.release.canary import CANARY, PRIMARY
from serve_app.release.canary_rollout import CanaryRollout
from serve_app.release.gateway import ServeGateway
from serve_app.release.guard import check_release
from serve_app.release.history import History
from serve_app.release.live import Live, with_entry
from serve_app.release.plan import (
    adapter_list,
    app_entry,
    app_settings,
    canary_settings,
    changed,
    first_release_baseline,
    is_canary_app,
    release_config,
    scaled,
    stored_config,
    submitted_entry,
    with_adapter,
    without_adapter,
)
from serve_app.release.rollout import Clock, ReleaseState, Rollout, Sleep
from serve_app.release.scopes import (
    APP,
    MODEL,
    check_scope,
    compose,
    describe,
    join,
    model_deployment,
    model_of,
    scope_of,
    section_owner,
    sections,
    splice,
    without,
)
from serve_app.release.status import status as release_status

logger = logging.getLogger("ray.serve")



class Releases:
    """The release controller's operations on one application, over a history and a Serve gateway."""

    def __init__(self, app_name: str, history: History, gateway: ServeGateway, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep):
        self.app = app_name
        self.history = history
        self.gateway = gateway
        # Scope -> its deploy or canary running in the background (one per scope; a whole-app one alone).
        self.tasks: dict[str, asyncio.Task] = {}
        self.cleanup: asyncio.Task | None = None  # a leftover canary being removed
        self.background: asyncio.Task | None = None  # the newest background task (what a caller may wait for)
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
        migrated for a deploy (None: the history holds no release)."""
        rows = [{**r, "config": stored_config(r)} for r in self.history.good()]
        if not rows:
            return None
        config = compose(rows, lambda c: app_entry(c, self.app), lambda c, e: with_entry(c, self.app, e))
        return {"n": rows[-1]["n"], "config": config}

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

    def _running(self) -> dict[str, asyncio.Task]:
        return {scope: t for scope, t in self.tasks.items() if not t.done()}

    def _check_free(self, scope: str) -> None:
        """409 when ``scope`` has a release deploying, or a whole-app one runs, or (for a whole-app release)
        any release runs."""
        busy = [s for s in self._running() if s in (scope, APP) or scope == APP]
        if busy:
            what = ", ".join(f"release {self.state.deploying.get(s)} ({describe(s)})" for s in busy)
            raise Conflict(f"{what} still being deployed; a release of {describe(scope)} waits for it", "release")

    def _start(self, scope: str, work) -> None:
        self.background = self.tasks[scope] = asyncio.get_running_loop().create_task(work)

    def _clean_up(self) -> None:
        """Start removing canaries left behind (called from every async entry point, /healthz included)."""
        if self.state.leftover_canary and (self.cleanup is None or self.cleanup.done()) and not self._running():
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
        self._check_free(scope)
        current = await asyncio.to_thread(self._good)
        base = current["config"] if current else None
        try:
            if scope != APP:
                if base is None:
                    raise ServiceUnavailable("a release of one model or component needs a running release first")
                entry = submitted_entry(config, self.app)
                running = [app_entry(c, self.app) for c in (base, self.live.config) if c is not None]
                check_scope(scope, entry, running)
                config = {"applications": [splice(app_entry(base, self.app), scope, entry)]}
            full, new_settings = release_config(base, config, self.app)
            # Data only, unless the running config allows code changes; with no release recorded yet, against
            # the defaults (which allow none).
            check_release(base or first_release_baseline(full, self.app), full, self.app)
        except AppError as exc:
            await asyncio.to_thread(Releases.audit, self, actor, f"{kind} refused", False, exc.message[:500])
            raise
        what = changed(app_entry(base, self.app) if base else None, app_entry(full, self.app))
        cs: CanarySettings | None = None
        if canary is not None:
            if scope.startswith("component:"):
                raise InvalidRequest("a canary tries a model's release: scope it to a model", "canary")
            cs = canary_settings(canary, new_settings, base, self.app, model_of(scope))
            kind = "canary"
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
        scope = MODEL + model
        self._check_free(scope)
        current = await asyncio.to_thread(self._current)
        names = app_settings(current["config"], self.app).model_names()
        if model not in names:
            raise NotFound(f"the model {model!r} is not served (served: {', '.join(names)})", "model")
        if names[0] == model:
            raise Conflict(f"{model!r} is the config's first model (args.model), the one its LLMServer deployment "
                           "is named after; it cannot be removed at run time: deploy a whole-app release without it",
                           "model")
        entry = without(app_entry(current["config"], self.app), scope)
        try:
            full, new_settings = release_config(current["config"], {"applications": [entry]}, self.app)
        except AppError as exc:  # rag.model or agent.model naming it
            raise InvalidRequest(f"the model {model!r} cannot be removed: {exc.message}", exc.param) from None
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
            # A canary is out: rolling back means stopping it (the current release never changed).
            n = canaries[canary_scope].n
            task.cancel()
            await asyncio.wait([task])
            return {"release": n, "status": self._get(n)["status"], "changed": [], "aborted_canary": True}
        if scope == APP:
            if to is None:
                current = self.history.last_good()
                target = self.history.last_good(before=current["n"]) if current else None
                if target is None:
                    raise NotFound("there is no earlier good release to roll back to", "release")
            else:
                target = self._get(to)
            return await self.deploy(stored_config(target), actor, note=f"rollback to release {target['n']}",
                                     kind="rollback")
        if to is None:
            n, config = await asyncio.to_thread(self._previous, scope)
        else:
            n, config = to, stored_config(self._get(to))
        return await self.deploy(config, actor, note=f"rollback of {describe(scope)} to release {n}", kind="rollback",
                                 scope=scope)

    def _previous(self, scope: str) -> tuple[int, dict]:
        """The release whose section of ``scope`` came before the running one, and the running config with
        that section."""
        seen: list[tuple[int, Any]] = []
        config: dict | None = None
        for r in self.history.good(whole=True):
            stored = stored_config(r)
            config = stored if config is None or (r.get("scope") or APP) == APP else \
                with_entry(config, self.app, splice(app_entry(config, self.app), r["scope"], app_entry(stored, self.app)))
            section = sections(app_entry(config, self.app)).get(scope)
            if not seen or seen[-1][1] != section:
                seen.append((r["n"], section))
        if len(seen) < 2 or seen[-2][1] is None or config is None:
            raise NotFound(f"there is no earlier good release of {describe(scope)} to roll back to", "release")
        n, section = seen[-2]
        good = self._current()["config"]
        secs = {**sections(app_entry(good, self.app)), scope: section}
        return n, with_entry(good, self.app, join(secs))

    # -- LoRA adapters: each load and unload is a release of its model (so a rollback undoes it) ---------

    def adapters(self) -> list[dict[str, str]]:
        current = self._good()
        return adapter_list(app_settings(current["config"], self.app)) if current else []

    async def load_adapter(self, model: str | None, name: str, folder: str, actor: str) -> dict[str, Any]:
        """Add an adapter to a model: checked and loaded once on one of its replicas first (a bad one is
        refused with the reason and nothing is recorded), then deployed as a release of that model."""
        current = self._current()
        new_app, model = with_adapter(current["config"], self.app, model, name, folder)
        _, settings = release_config(current["config"], {"applications": [new_app]}, self.app)  # names, counts
        deployment = model_deployment(settings, model)
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
                                kind="adapter-load", scope=MODEL + model)
        return {**out, "adapter": {"name": name, "model": model, "folder": folder, **trial}}

    async def unload_adapter(self, name: str, actor: str) -> dict[str, Any]:
        current = self._current()
        new_app, model = without_adapter(current["config"], self.app, name)
        out = await self.deploy({"applications": [new_app]}, actor, note=f"unload adapter {name} from {model}",
                                kind="adapter-unload", scope=MODEL + model)
        return {**out, "adapter": {"name": name, "model": model}}

    async def scale(self, deployment: str, replicas: int | None, factor: float | None, actor: str) -> dict[str, Any]:
        current = self._current()
        new_app, what = scaled(current["config"], self.app, deployment, replicas, factor)
        scope = section_owner(app_settings(current["config"], self.app), deployment)
        return await self.deploy({"applications": [new_app]}, actor, note=f"scale {what}", kind="scale", scope=scope)
