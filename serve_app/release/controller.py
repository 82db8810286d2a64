"""The release controller: deploy → watch → automatic rollback, scale, history. The seed's deploy_update
and scale_service.

It runs as one detached Ray actor per cluster (created on first use by the ingress), outside the Serve
application it updates, so it keeps watching while the app's replicas restart. A release is a whole Serve
config; it is applied with Serve's own in-place update (``deploy_apps``), exactly as ``serve deploy`` would,
so Serve decides what restarts: with Serve 2.60 a change of an application's ``args`` rebuilds every
deployment of the application, while a change of deployment options only (replicas, autoscaling bounds,
``user_config``) restarts nothing. The release number reaches the ingress through its ``user_config``.

Deploy flow: validate (nothing is touched if the release is invalid) → record it (status ``deploying``) →
apply → watch Serve's status until the application is RUNNING with every deployment HEALTHY, failing fast on
a replica that cannot start → probe every component's health for ``releases.watch_s`` → ``good``; on any
failure, redeploy the last good release and record both outcomes.

Canary flow (``deploy(..., canary={...})``): the new release's LLM is started as a second application
(``<app>-canary``, ``build_llm``) next to the running release, which is not touched → once it is healthy,
the ingress is told (``user_config``) to send ``share`` of LLM requests to it → both sides' counts, reported
by the ingress replicas, are compared over ``window_s`` (``canary.judge``) → pass: routing back to the current
release, then the whole new release rolls out as above (with its own watch and rollback); fail: routing back,
the canary application removed, the release recorded as failed — the current release served throughout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import ray
from ray.serve._private.constants import DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S

from serve_app.config.loader import (
    APP_IMPORT_PATH,
    LLM_IMPORT_PATH,
    ConfigError,
    deployment_names,
    validate_serve_config,
)
from serve_app.config.settings import AppSettings, CanarySettings
from serve_app.release.canary import CANARY, PRIMARY, ArmStats, judge
from serve_app.errors import Conflict, InvalidRequest, NotFound
from serve_app.config import paths
from serve_app.release.history import History

logger = logging.getLogger("ray.serve")

CONTROLLER_NAME = "serve_app_release_controller"
NAMESPACE = "serve_app"
PROBES = {"LLMServer": "health", "VectorStore": "health", "Embedder": "info", "Agent": "health"}


def drain_bound_s(app: dict[str, Any]) -> float:
    """The longest a replica of this application may take to stop (finish its requests) after Serve tells it
    to, from the deployed deployments' options in Serve's application details."""
    configs = [d.get("deployment_config") or {} for d in (app.get("deployments") or {}).values()]
    bounds = [c.get("graceful_shutdown_timeout_s", DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S) for c in configs]
    return float(max(bounds, default=0.0))


def _client():
    from ray.serve.context import _get_global_client

    return _get_global_client()


def _changed(old: dict | None, new: dict) -> list[str]:
    if old is None:
        return ["everything"]
    out = []
    oa, na = old.get("args") or {}, new.get("args") or {}
    for key in sorted(set(oa) | set(na)):
        if oa.get(key) != na.get(key):
            out.append(f"args.{key}")
    od = {d["name"]: d for d in old.get("deployments") or []}
    nd = {d["name"]: d for d in new.get("deployments") or []}
    for name in sorted(set(od) | set(nd)):
        a = {k: v for k, v in (od.get(name) or {}).items() if k != "user_config"}
        b = {k: v for k, v in (nd.get(name) or {}).items() if k != "user_config"}
        if a != b:
            out.append(f"deployments.{name}")
    for key in ("import_path", "runtime_env", "route_prefix"):
        if old.get(key) != new.get(key):
            out.append(key)
    return out


class ReleaseFailed(Exception):
    pass


@ray.remote(num_cpus=0, max_restarts=-1)
class ReleaseController:
    def __init__(self, app_name: str, state_dir: str | None = None):
        self.app = app_name
        self.canary_app = f"{app_name}-canary"
        self.history = History(state_dir or paths.state_dir())
        self._task: asyncio.Task | None = None
        self._deploying: int | None = None
        self._canary: dict[str, Any] | None = None
        for r in self.history.list():
            if r["status"] == "deploying":
                # This actor restarted mid-deploy (Ray restarts it): the outcome was never observed.
                self.history.finish(r["n"], "interrupted", "the release controller restarted during the deploy")
        if self.history.last_good() is None:
            # First start: what Serve runs now is release 1.
            config = self._deployed_config()
            self.history.add(actor="bootstrap", kind="initial", note="the release running when the controller started",
                             config=config, changed=["everything"], status="good")
            logger.info("release controller: recorded the running application as release 1")
        self._serving: int = self.history.last_good()["n"]
        # A canary left behind by a controller that died mid-window is removed on the first call.
        self._leftover_canary = self.canary_app in self._details()["applications"]

    def _clean_up(self) -> None:
        """Start removing a canary left behind (called from every async entry point, /healthz included)."""
        if self._leftover_canary and (self._task is None or self._task.done()):
            self._leftover_canary = False
            self._task = asyncio.get_running_loop().create_task(self._remove_leftover())

    async def _remove_leftover(self) -> None:
        try:
            await self._remove_canary(self.history.last_good())
            logger.info("removed a canary left by an earlier release controller")
        except Exception:  # noqa: BLE001 - retried on the next call
            logger.exception("removing a leftover canary failed; retrying on the next call")
            self._leftover_canary = True

    # -- reading Serve's state ------------------------------------------------------------------------

    def _details(self) -> dict[str, Any]:
        return _client().get_serve_details()

    def _deployed_config(self) -> dict[str, Any]:
        d = self._details()
        apps = [a["deployed_app_config"] for name, a in d["applications"].items()
                if a.get("deployed_app_config") and name != self.canary_app]
        config = {"applications": apps}
        if d.get("proxy_location"):
            config["proxy_location"] = d["proxy_location"]
        if d.get("http_options"):
            config["http_options"] = d["http_options"]
        from serve_app.config.parts import join

        return validate_serve_config(join(config), "deployed config")[0].model_dump(mode="json", exclude_unset=True)

    def _app_entry(self, config: dict) -> dict:
        for a in config["applications"]:
            if a["name"] == self.app:
                return a
        raise InvalidRequest(f"the release has no application named {self.app!r}", "applications")

    # -- the public operations (called by the ingress's admin routes) --------------------------------

    async def status(self) -> dict[str, Any]:
        self._clean_up()
        details = await asyncio.to_thread(self._details)
        app = details["applications"].get(self.app) or {}
        current = self.history.last_good()
        deployments = {
            name: {
                "status": d["status"],
                "status_trigger": d.get("status_trigger"),
                "message": d.get("message") or None,
                "target_replicas": d.get("target_num_replicas"),
                "running_replicas": sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING"),
            }
            for name, d in (app.get("deployments") or {}).items()
        }
        canary = None
        if self._canary is not None:
            c = self._canary
            canary = {"release": c["n"], "application": self.canary_app, "share": c["settings"].share,
                      "window_s": c["settings"].window_s, "phase": c["phase"],
                      "window_started_at": c["window_started_at"],
                      PRIMARY: c[PRIMARY].summary(), CANARY: c[CANARY].summary()}
        return {
            "application": self.app,
            "status": app.get("status"),
            # The release whose configuration Serve runs; last good is the one a rollback would go back to
            # (they differ while a release is deploying or after a failed rollback).
            "current_release": self._serving,
            "last_good_release": current["n"] if current else None,
            "deploying": self._deploying,
            "canary": canary,
            "deployments": deployments,
        }

    async def health(self) -> dict[str, Any]:
        """For the ingress's /healthz: answers while the actor runs; the history database must be readable."""
        self._clean_up()
        last = self.history.last_good()
        return {"last_good_release": last["n"] if last else None, "deploying": self._deploying,
                "canary": self._canary["phase"] if self._canary else None}

    def canary_report(self, release: int, data: dict[str, Any]) -> None:
        """Counts from one ingress replica since its last report (see canary.CanaryRouter.flush)."""
        c = self._canary
        if c is None or c["n"] != release or c["phase"] != "window":
            return
        for arm in (PRIMARY, CANARY):
            c[arm].add(data.get(arm) or {})

    def releases(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "config"} for r in self.history.list()]

    def release(self, n: int) -> dict[str, Any]:
        r = self.history.get(n)
        if r is None:
            raise NotFound(f"release {n} does not exist", "release")
        return r

    def audit(self, actor: str, action: str, allowed: bool, detail: str | None = None) -> None:
        self.history.audit(actor, action, allowed, detail)

    def audit_log(self) -> list[dict[str, Any]]:
        return self.history.audit_log()

    async def deploy(self, config: dict, actor: str, note: str | None = None, kind: str = "deploy",
                     canary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate and start deploying a release. Returns its number at once; the outcome is in history.

        ``canary`` (a possibly empty mapping of CanarySettings fields overriding the release's own
        ``releases.canary``) deploys it as a canary first."""
        self._clean_up()
        if self._task is not None and not self._task.done() and self._deploying is None:
            await asyncio.shield(self._task)  # a leftover canary being removed: a deploy waits for it
        if self._task is not None and not self._task.done():
            raise Conflict(f"release {self._deploying} is still being deployed", "release")
        current = self.history.last_good()
        base = current["config"] if current else self._deployed_config()
        # Serve's global options stay as they run (they cannot change in place); the application is the release.
        new_app = None
        for a in (config.get("applications") or []):
            if isinstance(a, dict) and a.get("name", self.app) == self.app:
                new_app = a
        if new_app is None:
            raise InvalidRequest(f"the release must contain the application {self.app!r}", "applications")
        if isinstance(config.get("logging_config"), dict) and not new_app.get("logging_config"):
            # Serve's global options are not part of a release, but the logging a file asks for is kept.
            new_app = {**new_app, "logging_config": config["logging_config"]}
        full = {**{k: v for k, v in base.items() if k != "applications"},
                "applications": [a for a in base["applications"] if a["name"] not in (self.app, self.canary_app)]
                + [{**new_app, "name": self.app}]}
        try:
            schema, settings = validate_serve_config(full, "release")
        except ConfigError as exc:
            raise InvalidRequest(str(exc).replace("invalid config release: ", ""), "config") from None
        full = schema.model_dump(mode="json", exclude_unset=True)
        app = self._app_entry(full)
        if app.get("import_path") != APP_IMPORT_PATH:
            raise InvalidRequest(f"the application must use import_path {APP_IMPORT_PATH}", "import_path")
        changed = _changed(self._app_entry(base) if current else None, app)
        new_settings = settings[self.app]
        if canary is not None:
            canary_settings = self._check_canary(canary, new_settings, current)
            kind = "canary"
        n = self.history.add(actor=actor, kind=kind, note=note, config=full, changed=changed, status="deploying")
        self._deploying = n
        if canary is not None:
            work = self._canary_out(n, full, new_settings, current, canary_settings)
        else:
            work = self._roll_out(n, full, new_settings, current)
        self._task = asyncio.get_running_loop().create_task(work)
        out = {"release": n, "status": "deploying", "changed": changed}
        if canary is not None:
            out["canary"] = canary_settings.model_dump()
        return out

    def _check_canary(self, overrides: dict[str, Any], new: AppSettings, current: dict | None) -> CanarySettings:
        if current is None:
            raise InvalidRequest("a canary needs a current good release to compare with", "canary")
        try:
            cs = CanarySettings.model_validate({**new.releases.canary.model_dump(), **overrides})
        except Exception as exc:  # pydantic ValidationError: name the field
            raise InvalidRequest(f"invalid canary settings: {exc}"[:600], "canary") from None
        old = AppSettings.model_validate(self._app_entry(current["config"]).get("args") or {})
        if not (new.model.enabled and old.model.enabled):
            raise InvalidRequest("a canary compares two LLMs: both releases need model.enabled", "canary")
        if new.model.name != old.model.name:
            # Clients name the model in every request; both sides must answer to the same name.
            raise InvalidRequest(f"a canary must serve the same model name as the current release "
                                 f"({old.model.name!r}, not {new.model.name!r})", "model.served_name")
        return cs

    async def rollback(self, actor: str, to: int | None = None) -> dict[str, Any]:
        if to is None and self._canary is not None and self._task is not None and not self._task.done():
            # A canary is out: rolling back means stopping it (the current release never changed).
            n = self._canary["n"]
            self._task.cancel()
            await asyncio.wait([self._task])
            return {"release": n, "status": self.history.get(n)["status"], "changed": [], "aborted_canary": True}
        if to is None:
            current = self.history.last_good()
            target = self.history.last_good(before=current["n"]) if current else None
            if target is None:
                raise NotFound("there is no earlier good release to roll back to", "release")
        else:
            target = self.history.get(to)
            if target is None:
                raise NotFound(f"release {to} does not exist", "release")
        return await self.deploy(target["config"], actor, note=f"rollback to release {target['n']}", kind="rollback")

    async def scale(self, deployment: str, replicas: int | None, factor: float | None, actor: str) -> dict[str, Any]:
        current = self.history.last_good()
        config = current["config"]
        app = self._app_entry(config)
        settings = AppSettings.model_validate(app.get("args") or {})
        if deployment not in deployment_names(settings):
            raise NotFound(f"the application has no deployment {deployment!r}", "deployment")
        deps = [dict(d) for d in app.get("deployments") or []]
        entry = next((d for d in deps if d["name"] == deployment), None)
        if entry is None:
            entry = {"name": deployment}
            deps.append(entry)
        auto = entry.get("autoscaling_config")
        if replicas is not None and isinstance(auto, dict):
            # Pinned through the autoscaling bounds: removing autoscaling_config would change the application's
            # code version in Serve's eyes (it hashes the deployments' autoscaling policies) and restart everything.
            entry["autoscaling_config"] = {**auto, "min_replicas": replicas, "max_replicas": max(replicas, 1)}
            what = f"{deployment} to {replicas} replicas (autoscaling bounds {replicas}..{max(replicas, 1)})"
        elif replicas is not None:
            entry["num_replicas"] = replicas
            what = f"{deployment} to {replicas} replicas"
        elif isinstance(auto, dict):
            lo = max(0, math.floor(auto.get("min_replicas", 1) * factor))
            hi = max(1, math.ceil(auto.get("max_replicas", 1) * factor))
            entry["autoscaling_config"] = {**auto, "min_replicas": min(lo, hi), "max_replicas": hi}
            what = f"{deployment} autoscaling bounds ×{factor:g}: {lo}..{hi}"
        else:
            n = entry.get("num_replicas", 1)
            entry["num_replicas"] = max(1, round((n if isinstance(n, int) else 1) * factor))
            what = f"{deployment} to {entry['num_replicas']} replicas (×{factor:g})"
        new_app = {**app, "deployments": deps}
        return await self.deploy({"applications": [new_app]}, actor, note=f"scale {what}", kind="scale")

    # -- rollout ----------------------------------------------------------------------------------------

    def _label(self, config: dict, n: int, canary: dict | None = None, canary_app: dict | None = None) -> dict:
        # The ingress shows the release number, and routes a share to a canary: both through user_config
        # (reconfigure, no restart). ``canary_app`` is added as a second application.
        app = self._app_entry(config)
        deps = [dict(d) for d in app.get("deployments") or []]
        ingress = next((d for d in deps if d["name"] == "Ingress"), None)
        if ingress is None:
            ingress = {"name": "Ingress"}
            deps.append(ingress)
        user_config = {k: v for k, v in (ingress.get("user_config") or {}).items() if k != "canary"}
        ingress["user_config"] = {**user_config, "release": str(n)} | ({"canary": canary} if canary else {})
        app = {**app, "deployments": deps}
        apps = [a if a["name"] != self.app else app for a in config["applications"] if a["name"] != self.canary_app]
        return {**config, "applications": apps + ([canary_app] if canary_app else [])}

    def _canary_application(self, config: dict, share: float) -> dict:
        """The new release's LLM deployment as an application of its own (no HTTP route)."""
        app = self._app_entry(config)
        llm = [dict(d) for d in app.get("deployments") or [] if d["name"] == "LLMServer"]
        for d in llm:
            # Sized to its share of the traffic, not to the whole load: a fixed replica count (at least one).
            auto = d.pop("autoscaling_config", None)
            base = d.get("num_replicas") if isinstance(d.get("num_replicas"), int) else \
                (auto or {}).get("min_replicas", 1) if isinstance(auto, dict) else 1
            d["num_replicas"] = max(1, math.ceil(max(base, 1) * share))
        out = {"name": self.canary_app, "import_path": LLM_IMPORT_PATH, "route_prefix": None,
               "args": app.get("args") or {}, "deployments": llm}
        for key in ("runtime_env", "logging_config"):
            if app.get(key):
                out[key] = app[key]
        return out

    async def _apply(self, config: dict) -> float:
        from ray.serve.schema import ServeDeploySchema

        from serve_app.config.parts import split

        started = time.time()
        schema = ServeDeploySchema.model_validate(split(config))
        await asyncio.to_thread(_client().deploy_apps, schema, _blocking=False)
        return started

    async def _wait_ready(self, started: float, settings: AppSettings, app_name: str | None = None) -> None:
        t0 = time.monotonic()
        drain_s = 0.0
        bad: dict[str, int] = {}
        armed: dict[str, bool] = {}
        fails: dict[str, int] = {}
        while True:
            details = await asyncio.to_thread(self._details)
            app = details["applications"].get(app_name or self.app)
            if app is not None and app.get("last_deployed_time_s", 0) >= started - 1:
                drain_s = max(drain_s, drain_bound_s(app))
                # Statuses can still show the previous rollout for a moment after the apply: a failure state
                # counts once it has been seen on three polls in a row; a replica that died after the apply
                # counts at once.
                states = {"app": app["status"]} | {n: d["status"] for n, d in (app.get("deployments") or {}).items()}
                for name, state in states.items():
                    bad[name] = bad.get(name, 0) + 1 if state in ("DEPLOY_FAILED", "UNHEALTHY") else 0
                    if bad[name] >= 3:
                        msg = app.get("message") if name == "app" else app["deployments"][name].get("message")
                        raise ReleaseFailed(f"{name} is {state}: {(msg or '')[:500]}")
                for name, d in (app.get("deployments") or {}).items():
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
                if app["status"] == "RUNNING" and all(d["status"] == "HEALTHY" for d in app["deployments"].values()):
                    return
            # Serve reports a deployment HEALTHY only once the replicas it replaced have stopped, and lets each
            # finish its requests for up to its graceful_shutdown_timeout_s: that drain is not the new
            # release's start-up, so it is added to the deadline (Serve bounds it itself).
            if time.monotonic() - t0 > settings.releases.ready_timeout_s + drain_s:
                raise ReleaseFailed(f"not RUNNING and healthy within {settings.releases.ready_timeout_s:g}s"
                                    + (f" (+{drain_s:g}s for replicas to drain)" if drain_s else ""))
            await asyncio.sleep(0.5)

    async def _watch(self, settings: AppSettings) -> None:
        from ray import serve

        names = [n for n in sorted(deployment_names(settings)) if n in PROBES]
        failures = dict.fromkeys(names, 0)
        end = time.monotonic() + settings.releases.watch_s
        while True:
            for name in names:
                handle = serve.get_deployment_handle(name, self.app)
                try:
                    await asyncio.wait_for(getattr(handle, PROBES[name]).remote(), settings.ingress.health_timeout_s)
                    failures[name] = 0
                except Exception as exc:  # noqa: BLE001 - any failure of a probe counts
                    failures[name] += 1
                    if failures[name] >= settings.releases.health_failures:
                        raise ReleaseFailed(f"{name} failed its health check: {type(exc).__name__}: {str(exc)[:300]}")
            if time.monotonic() >= end:
                return
            await asyncio.sleep(1.0)

    async def _roll_out(self, n: int, config: dict, settings: AppSettings, previous: dict | None,
                        prefix: str = "") -> None:
        t0 = time.monotonic()
        self._serving = n
        try:
            started = await self._apply(self._label(config, n))
            await self._wait_ready(started, settings)
            await self._watch(settings)
            self.history.finish(n, "good", f"{prefix}healthy after {time.monotonic() - t0:.1f}s")
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
            self._serving = back
            t1 = time.monotonic()
            prev_settings = AppSettings.model_validate(self._app_entry(previous["config"]).get("args") or {})
            try:
                started = await self._apply(self._label(previous["config"], back))
                await self._wait_ready(started, prev_settings)
                self.history.finish(back, "good", f"release {previous['n']} serving again {time.monotonic() - t1:.1f}s "
                                    f"after the rollback started ({time.monotonic() - t0:.1f}s after the deploy)")
            except Exception as exc2:  # noqa: BLE001
                self.history.finish(back, "failed", f"rollback failed: {exc2}")
        finally:
            self._deploying = None

    async def _canary_out(self, n: int, config: dict, settings: AppSettings, current: dict, cs: CanarySettings) -> None:
        t0 = time.monotonic()
        base, m = current["config"], current["n"]
        cur_settings = AppSettings.model_validate(self._app_entry(base).get("args") or {})
        route = {"app": self.canary_app, "share": cs.share, "release": n}
        self._canary = c = {"n": n, "settings": cs, "phase": "starting", "window_started_at": None,
                            PRIMARY: ArmStats(), CANARY: ArmStats()}
        try:
            # 1. The canary's LLM next to the current release (which is not touched); no traffic yet.
            canary_app = self._canary_application(config, cs.share)
            started = await self._apply(self._label(base, m, canary_app=canary_app))
            await self._wait_ready(started, settings, self.canary_app)
            # 2. Route the share to it, then compare both sides over the window.
            started = await self._apply(self._label(base, m, canary=route, canary_app=canary_app))
            await self._wait_ready(started, cur_settings)
            c["phase"], c["window_started_at"] = "window", time.time()
            verdict = await self._judge_window(c, settings, cs)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - every failure (or an abort) removes it
            if isinstance(exc, asyncio.CancelledError):
                reason = "aborted by a rollback request"
            else:
                reason = str(exc) if isinstance(exc, ReleaseFailed) else f"{type(exc).__name__}: {exc}"
            logger.warning("canary release %d failed: %s", n, reason)
            c["phase"] = "rolling back"
            try:
                await self._remove_canary(current)
                self.history.finish(n, "failed", f"canary rolled back: {reason}; release {m} served throughout, the "
                                    f"canary was removed {time.monotonic() - t0:.1f}s after the deploy")
            except Exception as exc2:  # noqa: BLE001 - retried by the next call (_clean_up)
                self.history.finish(n, "failed", f"canary rolled back: {reason}; removing it failed: {exc2}")
                self._leftover_canary = True
            self._canary = None
            self._deploying = None
            return
        # 3. Promote: all traffic back to the current release, then the whole release rolls out in place.
        logger.info("canary release %d passed: %s", n, verdict)
        c["phase"] = "promoting"
        try:
            started = await self._apply(self._label(base, m, canary_app=self._canary_application(config, cs.share)))
            await self._wait_ready(started, cur_settings)
        except Exception as exc:  # noqa: BLE001 - the rollout below removes the canary application anyway
            logger.warning("routing back from canary %d: %s", n, exc)
        self._canary = None
        await self._roll_out(n, config, settings, current, prefix=f"canary passed ({verdict}); promoted and ")

    async def _judge_window(self, c: dict, settings: AppSettings, cs: CanarySettings) -> str:
        from ray import serve

        end = time.monotonic() + cs.window_s
        failures = 0
        while True:
            await asyncio.sleep(1.0)
            try:
                handle = serve.get_deployment_handle("LLMServer", self.canary_app)
                await asyncio.wait_for(handle.health.remote(), settings.ingress.health_timeout_s)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - any failure of a probe counts
                failures += 1
                if failures >= settings.releases.health_failures:
                    raise ReleaseFailed(f"the canary's LLMServer failed its health check: {type(exc).__name__}: "
                                        f"{str(exc)[:300]}") from None
            final = time.monotonic() >= end
            if final:
                await asyncio.sleep(2.5)  # the ingress replicas report every 2 s: take the window's last counts
            verdict, reason = judge(c[PRIMARY], c[CANARY], cs, final)
            if verdict == "fail":
                raise ReleaseFailed(reason)
            if verdict == "pass":
                return reason

    async def _remove_canary(self, current: dict) -> None:
        """Route everything to the current release, then remove the canary application."""
        cur_settings = AppSettings.model_validate(self._app_entry(current["config"]).get("args") or {})
        details = await asyncio.to_thread(self._details)
        canary = details["applications"].get(self.canary_app)
        try:
            if canary and canary.get("deployed_app_config"):
                started = await self._apply(self._label(current["config"], current["n"],
                                                        canary_app=canary["deployed_app_config"]))
                await self._wait_ready(started, cur_settings)
        finally:
            # Removed even when routing back could not be confirmed: nothing may keep serving from it.
            started = await self._apply(self._label(current["config"], current["n"]))
        await self._wait_ready(started, cur_settings)


def get_controller(app_name: str):
    """The cluster's release controller, created on first use."""
    return ReleaseController.options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(app_name)
