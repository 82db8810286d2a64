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
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import ray

from serve_app.config.loader import APP_IMPORT_PATH, ConfigError, deployment_names, validate_serve_config
from serve_app.config.settings import AppSettings
from serve_app.errors import Conflict, InvalidRequest, NotFound
from serve_app.release.history import History, default_state_dir

logger = logging.getLogger("ray.serve")

CONTROLLER_NAME = "serve_app_release_controller"
NAMESPACE = "serve_app"
PROBES = {"LLMServer": "health", "VectorStore": "health", "Embedder": "info", "Agent": "health"}


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
        self.history = History(state_dir or default_state_dir())
        self._task: asyncio.Task | None = None
        self._deploying: int | None = None
        if self.history.last_good() is None:
            # First start: what Serve runs now is release 1.
            config = self._deployed_config()
            self.history.add(actor="bootstrap", kind="initial", note="the release running when the controller started",
                             config=config, changed=["everything"], status="good")
            logger.info("release controller: recorded the running application as release 1")

    # -- reading Serve's state ------------------------------------------------------------------------

    def _details(self) -> dict[str, Any]:
        return _client().get_serve_details()

    def _deployed_config(self) -> dict[str, Any]:
        d = self._details()
        apps = [a["deployed_app_config"] for a in d["applications"].values() if a.get("deployed_app_config")]
        config = {"applications": apps}
        if d.get("proxy_location"):
            config["proxy_location"] = d["proxy_location"]
        if d.get("http_options"):
            config["http_options"] = d["http_options"]
        return validate_serve_config(config, "deployed config")[0].model_dump(mode="json", exclude_unset=True)

    def _app_entry(self, config: dict) -> dict:
        for a in config["applications"]:
            if a["name"] == self.app:
                return a
        raise InvalidRequest(f"the release has no application named {self.app!r}", "applications")

    # -- the public operations (called by the ingress's admin routes) --------------------------------

    async def status(self) -> dict[str, Any]:
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
        return {
            "application": self.app,
            "status": app.get("status"),
            "current_release": current["n"] if current else None,
            "last_good_release": current["n"] if current else None,
            "deploying": self._deploying,
            "deployments": deployments,
        }

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

    async def deploy(self, config: dict, actor: str, note: str | None = None, kind: str = "deploy") -> dict[str, Any]:
        """Validate and start deploying a release. Returns its number at once; the outcome is in history."""
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
        full = {**{k: v for k, v in base.items() if k != "applications"},
                "applications": [a for a in base["applications"] if a["name"] != self.app] + [{**new_app, "name": self.app}]}
        try:
            schema, settings = validate_serve_config(full, "release")
        except ConfigError as exc:
            raise InvalidRequest(str(exc).replace("invalid config release: ", ""), "config") from None
        full = schema.model_dump(mode="json", exclude_unset=True)
        app = self._app_entry(full)
        if app.get("import_path") != APP_IMPORT_PATH:
            raise InvalidRequest(f"the application must use import_path {APP_IMPORT_PATH}", "import_path")
        changed = _changed(self._app_entry(base) if current else None, app)
        n = self.history.add(actor=actor, kind=kind, note=note, config=full, changed=changed, status="deploying")
        self._deploying = n
        self._task = asyncio.get_running_loop().create_task(self._roll_out(n, full, settings[self.app], current))
        return {"release": n, "status": "deploying", "changed": changed}

    async def rollback(self, actor: str, to: int | None = None) -> dict[str, Any]:
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

    def _label(self, config: dict, n: int) -> dict:
        # The ingress shows the release number; applied through user_config (no restart).
        app = self._app_entry(config)
        deps = [dict(d) for d in app.get("deployments") or []]
        ingress = next((d for d in deps if d["name"] == "Ingress"), None)
        if ingress is None:
            ingress = {"name": "Ingress"}
            deps.append(ingress)
        ingress["user_config"] = {**(ingress.get("user_config") or {}), "release": str(n)}
        app = {**app, "deployments": deps}
        return {**config, "applications": [a if a["name"] != self.app else app for a in config["applications"]]}

    async def _apply(self, config: dict) -> float:
        from ray.serve.schema import ServeDeploySchema

        started = time.time()
        schema = ServeDeploySchema.model_validate(config)
        await asyncio.to_thread(_client().deploy_apps, schema, _blocking=False)
        return started

    async def _wait_ready(self, started: float, settings: AppSettings) -> None:
        deadline = time.monotonic() + settings.releases.ready_timeout_s
        bad: dict[str, int] = {}
        armed: dict[str, bool] = {}
        fails: dict[str, int] = {}
        while True:
            details = await asyncio.to_thread(self._details)
            app = details["applications"].get(self.app)
            if app is not None and app.get("last_deployed_time_s", 0) >= started - 1:
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
            if time.monotonic() > deadline:
                raise ReleaseFailed(f"not RUNNING and healthy within {settings.releases.ready_timeout_s:g}s")
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

    async def _roll_out(self, n: int, config: dict, settings: AppSettings, previous: dict | None) -> None:
        t0 = time.monotonic()
        try:
            started = await self._apply(self._label(config, n))
            await self._wait_ready(started, settings)
            await self._watch(settings)
            self.history.finish(n, "good", f"healthy after {time.monotonic() - t0:.1f}s")
            logger.info("release %d is good", n)
        except Exception as exc:  # noqa: BLE001 - every failure leads to the rollback
            reason = str(exc) if isinstance(exc, ReleaseFailed) else f"{type(exc).__name__}: {exc}"
            logger.warning("release %d failed: %s", n, reason)
            if previous is None:
                self.history.finish(n, "failed", reason)
                return
            back = self.history.add(actor="controller", kind="rollback", note=f"automatic rollback of release {n}",
                                    config=previous["config"], changed=["everything"], status="deploying")
            self.history.finish(n, "failed", reason, rolled_back_to=back)
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


def get_controller(app_name: str):
    """The cluster's release controller, created on first use."""
    return ReleaseController.options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(app_name)
