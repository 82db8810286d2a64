"""One Serve application per component: what a config file describes, expanded into what Serve runs.

A config file (and every release, and the release history) holds one application in the *plain* form: its
``args`` are the app's settings (``AppSettings``), its ``deployments`` the options of every deployment. Serve
versions an application as a whole (a hash of its ``import_path``, ``runtime_env`` and ``args``: any change
rebuilds every deployment of it), so the plain application is handed to Serve *expanded* (``expand``), one
application per component, each with only the settings it reads as its ``args``:

    application             deployments            builder (serve_app/app.py)   args
    <app>                   Ingress                build_ingress                every section, each model's
                                                                                engine cut to max_model_len
    <app>-LLMServer-<m>     LLMServer-<m>          build_llm                    its model (model, engine, lora)
    <app>-retrieval         Embedder, VectorStore  build_retrieval              vector
    <app>-agent             Agent                  build_agent                  its model, ingress, agent,
                                                                                prompts, where the others are

So a release that changes one model's engine rebuilds that model's application alone; one that changes the
prompts rebuilds the ingress and the agent and no engine. Only the ingress has an HTTP route (the plain
application's ``route_prefix``) and keeps the plain application's name, so clients, the release controller
and ``serve status`` find it where they did. The others are reached by handle (``component_app`` names
them), looked up without waiting for them (Serve builds applications concurrently).

LoRA adapters change at run time: they are handed over as ``user_config`` (``{"adapters": ...}``, applied by
``reconfigure`` without a restart), to each LLM deployment its model's and to the Ingress every model's by
served name; no application's ``args`` hold them. A canary (release/plan.py) is one more LLM application.

Expansion is one way: the plain config is what the history keeps (release 1 is the file ``serve-app run``
started from); nothing is reconstructed from what Serve reports.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from pydantic import BaseModel

from serve_app.config.components import (
    AgentAppSettings,
    LLMAppSettings,
    RetrievalAppSettings,
    component_app,
)
from serve_app.config.loader import (
    AGENT_IMPORT_PATH,
    APP_IMPORT_PATH,
    INGRESS_IMPORT_PATH,
    LLM_IMPORT_PATH,
    RETRIEVAL_IMPORT_PATH,
    deployment_names,
    validate_app_args,
)
from serve_app.config.model_settings import EngineSettings, RoutingSettings
from serve_app.config.names import AGENT, EMBEDDER, INGRESS, VECTOR_STORE
from serve_app.config.settings import AppSettings

ADAPTERS = "adapters"
DEFAULT_APP_NAME = "default"  # Serve's name for an application that gives none


def component_apps(app: str, settings: AppSettings) -> dict[str, list[str]]:
    """Application name -> its deployments, for the plain application ``app`` with these settings."""
    out: dict[str, list[str]] = {}
    for name in sorted(deployment_names(settings)):
        out.setdefault(component_app(app, name), []).append(name)
    return out


def code_version(entry: dict[str, Any]) -> str:
    """What Serve versions an application's code by (import path, runtime_env, args), as a short hash: the
    version /admin/status shows for each application. (Serve also rebuilds on a change of an autoscaling
    policy, request router or deployment actor by import path, which a release cannot change unguarded.)"""
    key = {k: entry.get(k) for k in ("import_path", "runtime_env", "args")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def adapters_by_model(settings: AppSettings) -> dict[str, dict[str, str]]:
    """Served name -> its adapters (name -> folder), for every model with LoRA on."""
    return {m.model.name: dict(m.lora.adapters) for m in settings.served_models().values() if m.lora is not None}


def _dump(model: BaseModel) -> dict[str, Any]:
    # Every default written out: a default made explicit in a later release is no change.
    return model.model_dump(mode="json")


def llm_args(settings: AppSettings, deployment: str) -> dict[str, Any]:
    """The args of ``deployment``'s LLM application: its model without the adapters (its user_config)."""
    served = settings.served_models()[deployment]
    out = _dump(LLMAppSettings(deployment=deployment, model=served.model, engine=served.engine, lora=served.lora))
    if out.get("lora") is not None:
        out["lora"][ADAPTERS] = {}
    out.pop("routing", None)  # read by the callers' routers (request_router_config), not by the replica
    return out


ROUTER_CLASS = "serve_app.llm.router:LLMRequestRouter"


def router_config(routing: RoutingSettings) -> dict[str, Any] | None:
    """The LLM deployment's ``request_router_config`` for its routing settings (None: Serve's default)."""
    if routing.policy == "power_of_two":
        return None
    return {"request_router_class": ROUTER_CLASS, "request_router_kwargs": {
        "sessions": routing.sessions, "session_ttl_s": routing.session_ttl_s,
        "imbalanced_threshold": routing.imbalanced_threshold, "match_rate_threshold": routing.match_rate_threshold,
        "eviction_threshold_chars": routing.tree_max_chars, "eviction_target_chars": routing.tree_max_chars * 9 // 10}}


def _ingress_args(args: dict[str, Any], settings: AppSettings) -> dict[str, Any]:
    """The Ingress's args: the plain args as written, without the adapters and with each model's engine cut
    to what the ingress reads of it (max_model_len, for /v1/models), so engine changes do not reach it.
    ``max_num_seqs`` is written as the least value the settings' own check (at least ``ingress.max_n``) lets
    through, a function of the ingress's settings alone: the real engines were checked in the plain config."""
    out = copy.deepcopy(args)
    served = list(settings.served_models().values())
    sections = [out] + [m for m in out.get("models") or [] if isinstance(m, dict)]
    seqs = max(EngineSettings().max_num_seqs, settings.ingress.max_n)
    for section, model in zip(sections, served, strict=False):
        section["engine"] = {"max_model_len": model.engine.max_model_len, "max_num_seqs": seqs}
        if isinstance(section.get("lora"), dict):
            section["lora"].pop(ADAPTERS, None)
    return out


def _agent_args(app: str, settings: AppSettings) -> dict[str, Any]:
    name = settings.served_model(settings.agent.model).model.name
    deployment, served = next((d, m) for d, m in settings.served_models().items() if m.model.name == name)
    return _dump(AgentAppSettings(
        model=served.model, llm_deployment=deployment, llm_app=component_app(app, deployment),
        retrieval_app=component_app(app, VECTOR_STORE) if settings.vector.enabled else None,
        ingress=settings.ingress, agent=settings.agent, prompts=settings.prompts))


def _with_user_config(entry: dict[str, Any], adapters: Any) -> dict[str, Any]:
    user_config = entry.get("user_config")
    return {**entry, "user_config": {**(user_config if isinstance(user_config, dict) else {}), ADAPTERS: adapters}}


def _application(plain: dict[str, Any], name: str, import_path: str, args: dict[str, Any],
                 deployments: list[dict[str, Any]], route: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "import_path": import_path,
                           "route_prefix": plain.get("route_prefix", "/") if route else None, "args": args}
    if deployments:
        out["deployments"] = deployments
    for key in ("runtime_env", "logging_config", "external_scaler_enabled", "autoscaling_policy"):
        if plain.get(key) is not None:
            out[key] = copy.deepcopy(plain[key])
    return out


def llm_application(plain: dict[str, Any], deployment: str, name: str | None = None) -> dict[str, Any]:
    """``deployment``'s LLM application of the plain application ``plain`` (``name``: another application
    name than its own, a canary's)."""
    settings = validate_app_args(plain.get("args"))
    entries = [dict(d) for d in plain.get("deployments") or [] if d.get("name") == deployment]
    served = settings.served_models()[deployment]
    routing = router_config(served.routing)
    if routing is not None:  # a deployment entry that names its own router keeps it
        entries = [{"request_router_config": routing, **e} for e in entries] or [
            {"name": deployment, "request_router_config": routing}]
    if served.lora is not None:
        entries = [_with_user_config(e, dict(served.lora.adapters)) for e in entries] or [
            _with_user_config({"name": deployment}, dict(served.lora.adapters))]
    return _application(plain, name or component_app(plain.get("name") or DEFAULT_APP_NAME, deployment), LLM_IMPORT_PATH,
                        llm_args(settings, deployment), entries)


def expand_application(plain: dict[str, Any]) -> list[dict[str, Any]]:
    """The Serve applications of one plain application, the ingress first."""
    app, args = plain.get("name") or DEFAULT_APP_NAME, plain.get("args") or {}
    settings = validate_app_args(args)
    entries = {d["name"]: dict(d) for d in plain.get("deployments") or []}
    by_model = adapters_by_model(settings)
    ingress = [entries[INGRESS]] if INGRESS in entries else []
    if by_model:
        ingress = [_with_user_config(ingress[0] if ingress else {"name": INGRESS}, by_model)]
    out = [_application(plain, app, INGRESS_IMPORT_PATH, _ingress_args(args, settings), ingress, route=True)]
    out += [llm_application(plain, d) for d in settings.served_models()]
    if settings.vector.enabled:
        out.append(_application(plain, component_app(app, VECTOR_STORE), RETRIEVAL_IMPORT_PATH,
                                _dump(RetrievalAppSettings(vector=settings.vector)),
                                [entries[n] for n in (EMBEDDER, VECTOR_STORE) if n in entries]))
    if AGENT in deployment_names(settings):
        out.append(_application(plain, component_app(app, AGENT), AGENT_IMPORT_PATH, _agent_args(app, settings),
                                [entries[AGENT]] if AGENT in entries else []))
    return out


def expand(config: dict[str, Any]) -> dict[str, Any]:
    """The Serve config of a plain one: each plain application (``import_path: serve_app.app:build_app``)
    expanded into its components; every other application (a canary's) as it is."""
    out = copy.deepcopy(config)
    apps: list[dict[str, Any]] = []
    for a in out.get("applications") or []:
        apps += expand_application(a) if a.get("import_path") == APP_IMPORT_PATH else [a]
    out["applications"] = apps
    return out


def expand_schema(schema):
    """``expand`` for a parsed ``ServeDeploySchema`` (what ``serve-app run`` deploys); returns a new one."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(expand(schema.model_dump(mode="json", exclude_unset=True)))
