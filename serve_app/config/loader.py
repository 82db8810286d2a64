"""Load and validate a Serve config file (Serve's own schema) and the app settings inside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from serve_app.config.components import LLMAppSettings
from serve_app.config.names import AGENT, EMBEDDER, INGRESS, LLM_DEPLOYMENT, VECTOR_STORE, llm_deployment_name
from serve_app.config.secrets import check_secrets
from serve_app.config.settings import AppSettings

# What a config file names: the plain application, expanded into one Serve application per component
# (serve_app/config/apps.py), each built by its own builder.
APP_IMPORT_PATH = "serve_app.app:build_app"
INGRESS_IMPORT_PATH = "serve_app.app:build_ingress"
LLM_IMPORT_PATH = "serve_app.app:build_llm"  # one per served model, and a canary's
RETRIEVAL_IMPORT_PATH = "serve_app.app:build_retrieval"
AGENT_IMPORT_PATH = "serve_app.app:build_agent"


M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be deployed. The message names the offending field."""


def _describe(exc: ValidationError, prefix: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ""
        for p in (prefix, *err["loc"]):
            if isinstance(p, int):
                loc += f"[{p}]"  # a list's item, as written in YAML paths: models[0].engine
            elif p != "":
                loc += f".{p}" if loc else str(p)
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def validate_app_args(args: dict[str, Any] | None, where: str = "args") -> AppSettings:
    try:
        return AppSettings.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_describe(exc, where)}") from None


def validate_component_args(kind: type[M], args: dict[str, Any] | None, where: str = "args") -> M:
    """One component application's args (serve_app/config/components.py) as its builder reads them."""
    try:
        return kind.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_describe(exc, where)}") from None


def _check_single_writer(settings: AppSettings, deployments, app_index: int) -> None:
    """An embedded vector store is single-writer (one process per storage folder): refuse more replicas."""
    if not settings.vector.enabled or settings.vector.backend == "remote":
        return
    for j, d in enumerate(deployments or ()):
        if d.name != VECTOR_STORE:
            continue
        replicas = d.num_replicas if isinstance(d.num_replicas, int) else 1
        auto = d.autoscaling_config or {}
        max_replicas = auto.get("max_replicas", 1) if isinstance(auto, dict) else getattr(auto, "max_replicas", 1)
        if replicas > 1 or (max_replicas or 1) > 1:
            raise ConfigError(
                f"invalid config: applications[{app_index}].deployments[{j}]: the {settings.vector.backend} vector "
                "backend is single-writer, so VectorStore must have exactly one replica (use backend: remote to "
                "scale the store; the Embedder deployment scales either way)"
            )


def deployment_names(settings: AppSettings) -> set[str]:
    """The deployments ``build_app`` creates for these settings."""
    names = {INGRESS, *settings.served_models()}
    if settings.model.enabled:
        if settings.agent.enabled:
            names.add(AGENT)
    if settings.vector.enabled:
        names |= {EMBEDDER, VECTOR_STORE}
    return names


def _check_deployment_names(settings: AppSettings, deployments, app_index: int) -> None:
    # Serve refuses options for a deployment the application does not have, but only once Ray is up and
    # with a less direct message; say which setting disabled it.
    known = deployment_names(settings)
    for j, d in enumerate(deployments or ()):
        if d.name == LLM_DEPLOYMENT and settings.model.enabled:
            # Earlier versions named the first model's deployment by its place; stored releases are migrated
            # (config/versions.py), a file is the user's to rename.
            raise ConfigError(
                f"invalid config: applications[{app_index}].deployments[{j}]: deployments are named by the model "
                f"they serve: the first model's is {llm_deployment_name(settings.model_names()[0])!r}, not "
                f"{LLM_DEPLOYMENT!r}"
            )
        if d.name not in known:
            raise ConfigError(
                f"invalid config: applications[{app_index}].deployments[{j}]: this application has no deployment "
                f"{d.name!r} with these args (it deploys {sorted(known)}; LLMServer-<name> needs a model served "
                "as <name> (model, or an entry of models), Agent needs model.enabled and agent.enabled, "
                "Embedder and VectorStore need vector.enabled)"
            )


def load_serve_config(path: str | Path):
    """Parse a Serve config file into Serve's ``ServeDeploySchema`` and validate our app's settings.

    Returns ``(schema, {app_name: AppSettings})``. Raises ConfigError naming the field on any problem.
    """

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if isinstance(raw, dict):
        try:
            check_secrets(raw)  # the running config becomes release 1 of the history
        except ValueError as exc:
            raise ConfigError(f"invalid config {path}: {exc}") from None
    return validate_serve_config(raw, str(path))


def validate_serve_config(raw: Any, where: str = "config"):
    """``load_serve_config`` for an already parsed config (a release submitted to the admin API)."""
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping (Serve config format)")
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {where}: {_describe(exc, '')}") from None
    settings = {}
    for i, app in enumerate(schema.applications):
        if app.import_path == APP_IMPORT_PATH:
            settings[app.name] = s = validate_app_args(app.args, f"applications[{i}].args")
            _check_deployment_names(s, app.deployments, i)
            _check_single_writer(s, app.deployments, i)
        elif app.import_path == LLM_IMPORT_PATH:  # a canary's LLM, next to its plain application
            llm = validate_component_args(LLMAppSettings, app.args, f"applications[{i}].args")
            if not llm.model.enabled:
                raise ConfigError(f"invalid config: applications[{i}].args.model.enabled: {LLM_IMPORT_PATH} serves "
                                  "the model, it cannot be disabled")
            for j, d in enumerate(app.deployments or ()):
                if d.name != llm.deployment:
                    raise ConfigError(f"invalid config: applications[{i}].deployments[{j}]: {LLM_IMPORT_PATH} has "
                                      f"only the deployment {llm.deployment!r}, not {d.name!r}")
    if not settings:
        raise ConfigError(f"{where} has no application with import_path {APP_IMPORT_PATH}")
    return schema, settings
