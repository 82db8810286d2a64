"""Release planning: what a release is made of and what is applied for it, as functions of plain configs
(dicts in the Serve config format) and settings. Nothing here calls Serve (release/gateway.py does) or waits
(release/rollout.py does); every function answers from its arguments alone.

``app`` is always the name of the release's application in the Serve config; a canary of one of its models runs
next to it as the application ``canary_name(app, deployment)``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from serve_app.config.apps import adapters_by_model, llm_application
from serve_app.config.components import component_app
from serve_app.config.loader import APP_IMPORT_PATH, ConfigError, deployment_names, validate_serve_config
from serve_app.config.model_settings import check_folder_name
from serve_app.config.names import (
    AGENT,
    CANARY_SUFFIX,
    EMBEDDER,
    INGRESS,
    LLM_DEPLOYMENT,
    VECTOR_STORE,
    is_llm_deployment,
)
from serve_app.config.secrets import refusal, secret_problems
from serve_app.config.settings import AppSettings, CanarySettings
from serve_app.config.versions import migrate
from serve_app.errors import Conflict, InvalidRequest, NotFound
from serve_app.release.scopes import check_scope, splice

# The method of each deployment that answers a health probe (the watch after a rollout, a canary's window).
PROBES = {LLM_DEPLOYMENT: "health", VECTOR_STORE: "health", EMBEDDER: "info", AGENT: "health"}


def probe_method(deployment: str) -> str | None:
    """The health method a release's watch calls on ``deployment`` (every LLM deployment: ``health``)."""
    return PROBES[LLM_DEPLOYMENT if is_llm_deployment(deployment) else deployment] if (
        is_llm_deployment(deployment) or deployment in PROBES) else None


def canary_name(app: str, deployment: str) -> str:
    """The application of a canary of ``deployment`` (an LLM deployment) of the plain application ``app``."""
    return f"{component_app(app, deployment)}{CANARY_SUFFIX}"


def is_canary_app(app: str, name: str) -> bool:
    """Whether the Serve application ``name`` is a canary of the plain application ``app``'s (earlier releases
    named the first model's ``<app>-canary``)."""
    return name.startswith(app + "-") and name.endswith(CANARY_SUFFIX)


def app_entry(config: dict, app: str) -> dict:
    for a in config["applications"]:
        if a["name"] == app:
            return a
    raise InvalidRequest(f"the release has no application named {app!r}", "applications")


def app_settings(config: dict, app: str) -> AppSettings:
    return AppSettings.model_validate(app_entry(config, app).get("args") or {})


def stored_config(release: dict[str, Any]) -> dict:
    """A stored release's config in the shape this code deploys: migrated from the schema version it was
    stored in. Every read of a stored config for a deploy or a rollback goes through here."""
    try:
        return migrate(release["config"], release["schema_version"])
    except ConfigError as exc:
        raise InvalidRequest(f"release {release['n']} cannot be deployed: {exc}", "release") from None


def drain_bound_s(app: dict[str, Any], default_s: float) -> float:
    """The longest a replica of this application may take to stop (finish its requests) after Serve tells it
    to, from the deployed deployments' options in Serve's application details (``default_s``: Serve's own
    bound for a deployment that sets none)."""
    configs = [d.get("deployment_config") or {} for d in (app.get("deployments") or {}).values()]
    bounds = [c.get("graceful_shutdown_timeout_s", default_s) for c in configs]
    return float(max(bounds, default=0.0))


def changed(old: dict | None, new: dict) -> list[str]:
    """What differs between two entries of the release's application (``old`` None: a first release)."""
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


def submitted_entry(config: dict, app: str) -> dict:
    """The release's application in a submitted config (400 when it has none)."""
    new_app = None
    for a in (config.get("applications") if isinstance(config, dict) else None) or []:
        if isinstance(a, dict) and a.get("name", app) == app:
            new_app = a
    if new_app is None:
        raise InvalidRequest(f"the release must contain the application {app!r}", "applications")
    return new_app


def release_config(base: dict | None, config: dict, app: str) -> tuple[dict, AppSettings]:
    """The whole config a submitted release deploys: ``base`` (what runs; None: the history holds no release
    yet, and the submitted config is taken whole) with the release's application replaced, validated exactly
    like a config file. Returns it with the application's settings."""
    if base is None:  # the submitted config's other applications are what runs next to it
        base = {**{k: v for k, v in config.items() if k != "applications"},
                "applications": [a for a in config.get("applications") or []
                                 if isinstance(a, dict) and a.get("name", app) != app
                                 and not is_canary_app(app, a.get("name", app))]}
    # Serve's global options stay as they run (they cannot change in place); the application is the release.
    new_app = submitted_entry(config, app)
    secrets = secret_problems({"applications": [new_app]})  # the history keeps the release: no secret in it
    if secrets:
        field = secrets[0].replace("applications[0].", "")
        raise InvalidRequest(refusal(field), field)
    if isinstance(config.get("logging_config"), dict) and not new_app.get("logging_config"):
        # Serve's global options are not part of a release, but the logging a file asks for is kept.
        new_app = {**new_app, "logging_config": config["logging_config"]}
    full = {**{k: v for k, v in base.items() if k != "applications"},
            "applications": [a for a in base["applications"] if a["name"] != app and not is_canary_app(app, a["name"])]
            + [{**new_app, "name": app}]}
    try:
        schema, settings = validate_serve_config(full, "release")
    except ConfigError as exc:
        raise InvalidRequest(str(exc).replace("invalid config release: ", ""), "config") from None
    full = schema.model_dump(mode="json", exclude_unset=True)
    if app_entry(full, app).get("import_path") != APP_IMPORT_PATH:
        raise InvalidRequest(f"the application must use import_path {APP_IMPORT_PATH}", "import_path")
    return full, settings[app]


def scoped_config(base: dict, running: dict | None, config: dict, app: str, scope: str) -> dict:
    """The config a release scoped to ``scope`` deploys: ``base`` (the running config composed from the good
    releases) with ``scope``'s section of the submitted ``config``. The submitted application is first
    validated and normalised like any release's, then must agree with ``base`` or with ``running`` (what is
    applied while other scopes' releases run) outside its scope (release/scopes.py ``check_scope``)."""
    submitted, _ = release_config(base, config, app)
    entry = app_entry(submitted, app)
    check_scope(scope, entry, [app_entry(c, app) for c in (base, running) if c is not None])
    return {"applications": [splice(app_entry(base, app), scope, entry)]}


def first_release_baseline(config: dict, app: str) -> dict:
    """What a first release is checked against when the history holds none (release/guard.py): the
    application with default settings, which allow no code change, under the release's own import path."""
    entry = app_entry(config, app)
    return {**config, "applications": [{"name": app, "import_path": entry.get("import_path"), "args": {}}]}


def canary_settings(overrides: dict[str, Any], new: AppSettings, current_config: dict | None,
                    app: str, model: str | None = None) -> CanarySettings:
    """The settings a canary of ``model`` (None: the first model) in a release with settings ``new`` runs with
    (``overrides`` over the release's own ``releases.canary``), checked against the current release
    (``current_config``, None: there is none)."""
    if current_config is None:
        raise InvalidRequest("a canary needs a current good release to compare with", "canary")
    try:
        cs = CanarySettings.model_validate({**new.releases.canary.model_dump(), **overrides})
    except ValidationError as exc:  # its message names the field
        raise InvalidRequest(f"invalid canary settings: {exc}"[:600], "canary") from None
    old = app_settings(current_config, app)
    if not (new.model.enabled and old.model.enabled):
        raise InvalidRequest("a canary compares two LLMs: both releases need model.enabled", "canary")
    if model is None and new.model.name != old.model.name:
        # Clients name the model in every request; both sides must answer to the same name.
        raise InvalidRequest(f"a canary must serve the same model name as the current release "
                             f"({old.model.name!r}, not {new.model.name!r})", "model.served_name")
    if model is not None and model not in old.model_names():
        raise InvalidRequest(f"a canary compares a new release of a served model with the running one: {model!r} "
                             "is not served yet (add it with a release first)", "canary")
    return cs


# -- LoRA adapters: a release that loads or unloads one changes only the model's lora.adapters ---------------


def adapter_list(settings: AppSettings) -> list[dict[str, str]]:
    """Every configured adapter: its name, model and folder."""
    return [{"name": a, "model": m, "folder": folder} for m, adapters in adapters_by_model(settings).items()
            for a, folder in adapters.items()]


def _lora_target(args: dict, settings: AppSettings, model: str) -> dict:
    """The mapping in plain ``args`` that holds ``model``'s ``lora`` section (the args, or its models entry)."""
    names = settings.model_names()
    if model not in names:
        raise NotFound(f"the model {model!r} is not served (served: {', '.join(names)})", "model")
    i = names.index(model)
    target = args if i == 0 else args["models"][i - 1]
    if not isinstance(target.get("lora"), dict):
        raise InvalidRequest(f"LoRA is off for the model {model!r}: deploy a release that sets its lora section "
                             "(an engine restart) before loading adapters", "model")
    return target


def with_adapter(config: dict, app: str, model: str | None, name: str, folder: str) -> tuple[dict, str]:
    """The release's application with the adapter ``name`` (``folder`` under the root) added to ``model``
    (None: the first model), and the served name of that model."""
    import copy

    try:
        check_folder_name(folder, "path")
    except ValueError as exc:
        raise InvalidRequest(str(exc), "path") from None
    entry = app_entry(config, app)
    args = copy.deepcopy(entry.get("args") or {})
    settings = AppSettings.model_validate(args)
    model = model or settings.model_names()[0]
    if name in settings.adapters():
        raise Conflict(f"the adapter {name!r} is already loaded (on {settings.adapters()[name]}); unload it first",
                       "name")
    target = _lora_target(args, settings, model)
    target["lora"]["adapters"] = {**(target["lora"].get("adapters") or {}), name: folder}
    return {**entry, "args": args}, model


def without_adapter(config: dict, app: str, name: str) -> tuple[dict, str]:
    """The release's application without the adapter ``name``, and the served name of its model."""
    import copy

    entry = app_entry(config, app)
    args = copy.deepcopy(entry.get("args") or {})
    settings = AppSettings.model_validate(args)
    model = settings.adapters().get(name)
    if model is None:
        raise NotFound(f"there is no adapter {name!r}", "name")
    adapters = _lora_target(args, settings, model)["lora"]["adapters"]
    del adapters[name]
    return {**entry, "args": args}, model


def new_adapters(settings: AppSettings, previous: AppSettings | None) -> list[tuple[str, str, str]]:
    """(LLM deployment, adapter, folder) of every adapter ``settings`` has and ``previous`` has not (or with
    another folder): what a release's rollout has one replica load before the release counts as good."""
    before = adapters_by_model(previous) if previous is not None else {}
    return [(deployment, name, folder) for deployment, served in settings.served_models().items()
            if served.lora is not None for name, folder in served.lora.adapters.items()
            if before.get(served.model.name, {}).get(name) != folder]


def scaled(config: dict, app: str, deployment: str, replicas: int | None,
           factor: float | None) -> tuple[dict, str]:
    """The release's application with one deployment scaled (to ``replicas``, or by ``factor``), and what
    was done, in words."""
    entry_app = app_entry(config, app)
    settings = AppSettings.model_validate(entry_app.get("args") or {})
    if deployment not in deployment_names(settings):
        raise NotFound(f"the application has no deployment {deployment!r}", "deployment")
    deps = [dict(d) for d in entry_app.get("deployments") or []]
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
    elif factor is None:  # the admin request allows exactly one of the two
        raise InvalidRequest("give exactly one of replicas or factor")
    elif isinstance(auto, dict):
        # Scaling never takes a model to zero replicas by rounding: only min_replicas 0 written out does.
        old_lo = auto.get("min_replicas", 1)
        lo = max(0 if old_lo == 0 else 1, math.floor(old_lo * factor))
        hi = max(1, math.ceil(auto.get("max_replicas", 1) * factor))
        entry["autoscaling_config"] = {**auto, "min_replicas": min(lo, hi), "max_replicas": hi}
        what = f"{deployment} autoscaling bounds ×{factor:g}: {lo}..{hi}"
    else:
        n = entry.get("num_replicas", 1)
        entry["num_replicas"] = max(1, round((n if isinstance(n, int) else 1) * factor))
        what = f"{deployment} to {entry['num_replicas']} replicas (×{factor:g})"
    return {**entry_app, "deployments": deps}, what


def label(config: dict, app: str, n: int | None, canaries: dict[str, dict] | None = None,
          extra: list[dict] | None = None) -> dict:
    """The config to apply for release ``n`` (``config`` labelled with it): the ingress shows the release number
    and routes a share of each model in ``canaries`` (served name -> {app, deployment, share, release}) to its
    canary, both through its user_config (reconfigure, no restart); ``extra`` applications (canaries, a model
    starting or draining) run next to the release's."""
    entry = app_entry(config, app)
    deps = [dict(d) for d in entry.get("deployments") or []]
    ingress = next((d for d in deps if d["name"] == INGRESS), None)
    if ingress is None:
        ingress = {"name": INGRESS}
        deps.append(ingress)
    user_config = {k: v for k, v in (ingress.get("user_config") or {}).items() if k not in ("canary", "canaries")}
    ingress["user_config"] = {**user_config, "release": str(n)} | ({"canaries": canaries} if canaries else {})
    entry = {**entry, "deployments": deps}
    apps = [a if a["name"] != app else entry for a in config["applications"] if not is_canary_app(app, a["name"])]
    return {**config, "applications": apps + list(extra or [])}


def canary_application(config: dict, app: str, deployment: str, share: float) -> dict:
    """The new release's ``deployment`` (an LLM) as an application of its own (no HTTP route), built like the
    model's own application (serve_app/config/apps.py)."""
    out = llm_application(app_entry(config, app), deployment, canary_name(app, deployment))
    llm = [dict(d) for d in out.get("deployments") or []] or [{"name": deployment}]
    for d in llm:
        # Sized to its share of the traffic, not to the whole load: a fixed replica count (at least one).
        auto = d.pop("autoscaling_config", None)
        n = d.get("num_replicas")
        base = n if isinstance(n, int) else auto.get("min_replicas", 1) if isinstance(auto, dict) else 1
        d["num_replicas"] = max(1, math.ceil(max(base, 1) * share))
    return {**out, "deployments": llm}
