"""Per-deployment versions: each deployment restarts only when its own part of the settings changes.

Serve versions an application as a whole: its code version is a hash of the config's ``import_path``,
``runtime_env`` and ``args``, and every deployment of the application gets that version, so any change of
``args`` (a prompt, a RAG option) replaces every replica, the model's included. What Serve does version per
deployment is the deployment's own options: a change of ``ray_actor_options`` restarts that deployment's
replicas (a rolling update, ``max_surge_percent`` honoured), a change of ``user_config`` only calls its
``reconfigure``, and the other deployments are left alone.

So a config is deployed *split* (``split``): ``args`` keep only which components exist (a change there does
rebuild the application), and each deployment gets the part of the settings it reads as the environment
variable ``SERVE_APP_DEPLOYMENT_SETTINGS`` of its ``ray_actor_options.runtime_env``:

    LLMServer           model, engine
    LLMServer-<name>    its entry of models (model, engine)
    Embedder            vector
    VectorStore         vector
    Agent               its model (agent.model), ingress, agent, prompts
    Ingress             everything (it reads every section, and it is cheap to replace)

A release that changes the prompts therefore replaces the Ingress and the Agent and leaves the model
loaded; one that changes ``engine`` replaces the LLM (and the Ingress) and leaves the vector store up.

LoRA adapters (``lora.adapters`` of a model) are the exception: they change at run time, so they are handed
over as ``user_config`` (``{"adapters": ...}``), which Serve gives to the running replicas' ``reconfigure``:
each LLM deployment gets its model's, the Ingress every model's by served name, and neither's environment
holds them. A release that loads or unloads an adapter therefore restarts nothing.
``join`` turns a split config (what Serve reports as deployed) back into the config that was split.

Config files, releases and their history always hold the plain form; only what is handed to Serve is split.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel, Field

from serve_app.config.loader import APP_IMPORT_PATH, deployment_names, validate_app_args
from serve_app.config.names import AGENT, EMBEDDER, INGRESS, LLM_DEPLOYMENT, VECTOR_STORE, is_llm_deployment
from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import (
    AgentSettings,
    AppSettings,
    IngressSettings,
    ModelSettings,
    ServedModel,
    VectorSettings,
    _Strict,
)

ENV = "SERVE_APP_DEPLOYMENT_SETTINGS"
# Marks ray_actor_options that ``split`` wrote for an entry that had none (``join`` removes them again).
ADDED = "SERVE_APP_SPLIT_OPTIONS"
SPLIT_KEY = "split_settings"

# An LLM deployment's part of the settings: the model it serves (``model`` and ``engine`` for the first model,
# an entry of ``models`` for the others).
LLMServerSettings = ServedModel


class VectorTierSettings(_Strict):
    """The Embedder's and the VectorStore's part of the settings."""

    vector: VectorSettings = Field(default_factory=VectorSettings, description="Retrieval tier.")


class AgentServerSettings(_Strict):
    """The Agent deployment's part of the settings."""

    model: ModelSettings = Field(default_factory=ModelSettings, description="The model it uses (agent.model).")
    llm_deployment: str = Field(default=LLM_DEPLOYMENT, description="The LLM deployment serving that model.")
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="Deadlines and retries of its calls.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The tool-using agent.")
    prompts: PromptSettings = Field(default_factory=PromptSettings, description="Prompt templates (versioned).")


# Each deployment's type of settings: the sections it reads. The Ingress reads every section; every LLM
# deployment (``LLMServer``, ``LLMServer-<name>``) reads its model's.
PART_TYPES: dict[str, type[BaseModel]] = {
    LLM_DEPLOYMENT: LLMServerSettings,
    EMBEDDER: VectorTierSettings,
    VECTOR_STORE: VectorTierSettings,
    AGENT: AgentServerSettings,
    INGRESS: AppSettings,
}


def part_type(deployment: str) -> type[BaseModel]:
    return PART_TYPES[LLM_DEPLOYMENT if is_llm_deployment(deployment) else deployment]


# The ``ray_actor_options`` each deployment declares in code. A config entry that sets ray_actor_options
# replaces these (Serve does not merge them), so ``split`` starts from them when the entry has none.
CODE_ACTOR_OPTIONS: dict[str, dict[str, Any]] = {
    LLM_DEPLOYMENT: {},
    EMBEDDER: {"num_cpus": 0},
    VECTOR_STORE: {"num_cpus": 0},
    AGENT: {"num_cpus": 0},
    INGRESS: {"num_cpus": 0},
}


def code_actor_options(deployment: str) -> dict[str, Any]:
    return dict(CODE_ACTOR_OPTIONS[LLM_DEPLOYMENT if is_llm_deployment(deployment) else deployment])


def part(settings: AppSettings, deployment: str) -> BaseModel:
    """``deployment``'s part of the settings, of its own type."""
    kind = part_type(deployment)
    if kind is AppSettings:
        return settings
    if kind is LLMServerSettings:
        return settings.served_models()[deployment]
    if kind is AgentServerSettings:
        name = settings.served_model(settings.agent.model).model.name
        deployment, served = next((d, m) for d, m in settings.served_models().items() if m.model.name == name)
        return AgentServerSettings(model=served.model, llm_deployment=deployment, ingress=settings.ingress,
                                   agent=settings.agent, prompts=settings.prompts)
    return kind(**{k: getattr(settings, k) for k in kind.model_fields})


def _encode(part: dict[str, Any]) -> str:
    return json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)


ADAPTERS = "adapters"


def adapters_by_model(settings: AppSettings) -> dict[str, dict[str, str]]:
    """Served name -> its adapters (name -> folder), for every model with LoRA on."""
    return {m.model.name: dict(m.lora.adapters) for m in settings.served_models().values() if m.lora is not None}


def _lora_sections(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``lora`` sections of plain args as written, the first model's first."""
    sections = [args.get("lora")] + [m.get("lora") for m in args.get("models") or [] if isinstance(m, dict)]
    return [s for s in sections if isinstance(s, dict)]


def _without_adapters(args: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(args)
    for section in _lora_sections(out):
        section.pop(ADAPTERS, None)
    return out


def _with_adapters(args: dict[str, Any], by_model: dict[str, dict[str, str]]) -> None:
    """Put adapters (served name -> adapters) back into plain args as written (the inverse of the above)."""
    served = list(validate_app_args(args).served_models().values())
    for i, m in enumerate(served):
        if by_model.get(m.model.name):
            target = args if i == 0 else args["models"][i - 1]
            target["lora"][ADAPTERS] = by_model[m.model.name]


def _set_user_config(entry: dict[str, Any], adapters: Any) -> None:
    user_config = entry.get("user_config")
    entry["user_config"] = {**(user_config if isinstance(user_config, dict) else {}), ADAPTERS: adapters}


def _pop_user_config(entry: dict[str, Any]) -> Any:
    user_config = entry.get("user_config")
    if not isinstance(user_config, dict) or ADAPTERS not in user_config:
        return None
    value = user_config.pop(ADAPTERS)
    if not user_config:
        del entry["user_config"]
    return value


def split_args(settings: AppSettings) -> dict[str, Any]:
    """What a split config's ``args`` keep: which components exist (``build_app`` binds these)."""
    return {"model": settings.model.enabled, "vector": settings.vector.enabled, "agent": settings.agent.enabled,
            "llm_deployments": list(settings.served_models())}


def split(config: dict[str, Any]) -> dict[str, Any]:
    """The config to hand to Serve: every ``build_app`` application split per deployment (others unchanged)."""
    out = copy.deepcopy(config)
    for app in out.get("applications") or []:
        if app.get("import_path") != APP_IMPORT_PATH or SPLIT_KEY in (app.get("args") or {}):
            continue
        app_args = app.get("args") or {}
        settings = validate_app_args(app_args)
        app["args"] = {SPLIT_KEY: split_args(settings)}
        by_model = adapters_by_model(settings)
        deps = app.setdefault("deployments", [])
        for name in sorted(deployment_names(settings)):
            entry = next((d for d in deps if d.get("name") == name), None)
            if entry is None:
                entry = {"name": name}
                deps.append(entry)
            added = not isinstance(entry.get("ray_actor_options"), dict)
            if added:
                entry["ray_actor_options"] = code_actor_options(name)
            options = entry["ray_actor_options"]
            if not isinstance(options.get("runtime_env"), dict):
                options["runtime_env"] = {}
            if not isinstance(options["runtime_env"].get("env_vars"), dict):
                options["runtime_env"]["env_vars"] = {}
            # The Ingress gets the args as written (so ``join`` gives them back unchanged); the others their
            # sections with every default filled in (a default written out is no change).
            value = app_args if name == INGRESS else part(settings, name).model_dump(mode="json")
            if by_model and name == INGRESS:
                value = _without_adapters(app_args)
                _set_user_config(entry, by_model)
            elif is_llm_deployment(name) and value.get("lora") is not None:
                _set_user_config(entry, value["lora"].pop(ADAPTERS))
                value["lora"][ADAPTERS] = {}
            options["runtime_env"]["env_vars"][ENV] = _encode(value)
            if added:
                options["runtime_env"]["env_vars"][ADDED] = "1"
    return out


def join(config: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``split``: the plain config a split one came from."""
    out = copy.deepcopy(config)
    for app in out.get("applications") or []:
        if app.get("import_path") != APP_IMPORT_PATH or SPLIT_KEY not in (app.get("args") or {}):
            continue
        deps = []
        for entry in app.get("deployments") or []:
            options = entry.get("ray_actor_options") or {}
            env = (options.get("runtime_env") or {}).get("env_vars") or {}
            if ENV in env:
                adapters = _pop_user_config(entry)
            if entry.get("name") == INGRESS and ENV in env:
                app["args"] = json.loads(env[ENV])
                if adapters:
                    _with_adapters(app["args"], adapters)
            if ENV in env:
                del env[ENV]
                if env.pop(ADDED, None):
                    entry.pop("ray_actor_options", None)
                else:
                    if not env:
                        del options["runtime_env"]["env_vars"]
                    if not options.get("runtime_env"):
                        options.pop("runtime_env", None)
            if set(entry) != {"name"}:
                deps.append(entry)
        if deps:
            app["deployments"] = deps
        else:
            app.pop("deployments", None)
        if SPLIT_KEY in (app.get("args") or {}):
            raise ValueError(f"application {app.get('name')!r}: split config without the Ingress's settings")
    return out


def deployment_settings(given: dict[str, Any] | None, deployment: str):
    """A deployment's settings, of its own type (``PART_TYPES``): from the whole settings it was bound with,
    else (split deploy) from its part in the environment."""
    import os

    if given is not None:
        return part(AppSettings.model_validate(given), deployment)
    raw = os.environ.get(ENV)
    if raw is None:
        raise RuntimeError(f"no settings: the deployment was bound without settings and ${ENV} is not set")
    return part_type(deployment).model_validate(json.loads(raw))


def split_schema(schema):
    """``split`` for a parsed ``ServeDeploySchema`` (what ``serve-app run`` deploys); returns a new one."""
    from ray.serve.schema import ServeApplicationSchema

    apps = split({"applications": [a.model_dump(mode="json", exclude_unset=True) for a in schema.applications]})
    return schema.model_copy(update={"applications": [ServeApplicationSchema.model_validate(a)
                                                      for a in apps["applications"]]})
