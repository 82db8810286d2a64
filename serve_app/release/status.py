"""/admin/status and ``serve-app status``: what Serve runs of the release's applications, and per model its
release, replicas, canary and state (the release controller's ``status``)."""

from __future__ import annotations

from typing import Any

from serve_app.config.apps import code_version
from serve_app.config.components import component_app
from serve_app.release.canary import CANARY, PRIMARY
from serve_app.release.plan import app_settings, is_canary_app
from serve_app.release.rollout import CanaryRun, ReleaseState
from serve_app.release.scopes import APP, MODEL


def _canary(c: CanaryRun) -> dict[str, Any]:
    return {"release": c.n, "scope": c.scope, "model": c.model, "application": c.application,
            "share": c.settings.share, "window_s": c.settings.window_s, "phase": c.phase,
            "window_started_at": c.window_started_at, PRIMARY: c.stats[PRIMARY].summary(),
            CANARY: c.stats[CANARY].summary()}


def _deployment(app_name: str, d: dict[str, Any]) -> dict[str, Any]:
    return {
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


def model_releases(good: list[dict[str, Any]]) -> dict[str, int]:
    """Scope -> the last good release of it (a whole-app release counts for every scope)."""
    out: dict[str, int] = {}
    for r in good:
        out[r.get("scope") or APP] = r["n"]
    return out


def status(app: str, details: dict[str, Any], state: ReleaseState, good: dict[str, Any] | None,
           good_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``details``: Serve's; ``good``: the running config composed ({n, config}); ``good_rows``: the good
    releases it was composed of."""
    # The release's applications: the ingress's (named like the release's application) and the other
    # components' and canaries', named after it (serve_app/config/apps.py).
    apps = {name: a for name, a in details["applications"].items() if name == app or name.startswith(app + "-")}
    serving = {name: a for name, a in apps.items() if not is_canary_app(app, name)}
    deployments = {name: _deployment(app_name, d) for app_name, a in serving.items()
                   for name, d in (a.get("deployments") or {}).items()}
    applications = {
        name: {"status": a.get("status"), "version": code_version(a.get("deployed_app_config") or {}),
               "last_deployed_time_s": a.get("last_deployed_time_s"),
               "deployments": sorted(a.get("deployments") or {})}
        for name, a in sorted(apps.items())
    }
    canaries = {scope: _canary(c) for scope, c in state.canaries.items()}
    last = model_releases(good_rows)
    models: dict[str, Any] = {}
    if good is not None:
        for deployment, served in app_settings(good["config"], app).served_models().items():
            name, scope = served.model.name, MODEL + served.model.name
            app_name = component_app(app, deployment)
            models[name] = {
                "deployment": deployment, "application": app_name,
                "state": (serving.get(app_name) or {}).get("status"),
                "release": max(last.get(scope, 0), last.get(APP, 0)) or None,
                "deploying": state.deploying.get(scope),
                "canary": canaries.get(scope) or next((c for c in canaries.values() if c["model"] == name), None),
                "replicas": (deployments.get(deployment) or {}).get("replicas", []),
            }
    statuses = [a.get("status") for a in serving.values()]
    return {
        "application": app,
        # RUNNING when every application of the release runs, else the first that does not say so.
        "status": next((st for st in statuses if st != "RUNNING"), "RUNNING") if statuses else None,
        "applications": applications,
        # The release whose configuration Serve runs (applied last); last good is the newest good one (they
        # differ while a release is deploying or after a failed rollback).
        "current_release": state.serving,
        "last_good_release": good["n"] if good else None,
        # The newest release deploying (any scope), and every one by scope.
        "deploying": max(state.deploying.values(), default=None),
        "deploying_by_scope": dict(state.deploying),
        # The first canary out (any model), and every one by scope.
        "canary": next(iter(canaries.values()), None),
        "canaries": canaries,
        "models": models,
        "deployments": deployments,
    }
