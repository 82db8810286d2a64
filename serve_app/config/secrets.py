"""Secrets as references: a config (a file for ``serve-app run``, a release) never carries a secret's value.

A config is stored whole in the release history and served back by ``GET /admin/releases/{n}``, so a value
written into it would be readable by every holder of the admin key, forever, and in every backup of the
state directory. Instead a config names where the secret is:

- an environment variable of the nodes' processes: ``OTEL_EXPORTER_OTLP_HEADERS: "authorization=${OTLP_AUTH}"``
  in a ``runtime_env.env_vars``. Ray expands ``${NAME}`` when it starts each replica's process, from the
  environment Ray was started with (on KubeRay: the pod's env, e.g. from a Kubernetes Secret);
- a mounted file, for the app's own secrets: ``SERVE_APP_ADMIN_KEY_FILE``, ``SERVE_APP_API_KEYS_FILE``
  (only the path is in the config).

The state store's URL (``SERVE_APP_STATE_URL``, ``SERVE_APP_STATE_URL_FILE``) is refused in a config altogether
(``PROCESS_ONLY``): it is read from the environment Ray runs with.

``check_secrets`` refuses a config whose environment variable with a secret's name (a name part such as
KEY, TOKEN, SECRET, PASSWORD, AUTH, HEADERS, CREDENTIALS) holds a value without a ``${NAME}`` reference; the
refusal names the field and never repeats the value. ``redacted`` hides such values in a config read back
from a history written before this rule.
"""

from __future__ import annotations

import copy
import re
from typing import Any

_SECRET_PARTS = {"KEY", "APIKEY", "TOKEN", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "PASSPHRASE", "AUTH",
                 "AUTHORIZATION", "HEADERS", "CREDENTIAL", "CREDENTIALS", "COOKIE", "DSN"}
# Names that hold where a secret is, not the secret.
_LOCATION_SUFFIXES = ("_FILE", "_PATH", "_DIR", "_ENV")
_REFERENCE = re.compile(r"\$\{[A-Z0-9_]+\}")
REDACTED = "<redacted>"


# Read from the environment Ray runs with, never from a config: configs are what the state store keeps, and a
# release cannot move the store its own history is in (serve_app/state/store.py).
PROCESS_ONLY = frozenset({"SERVE_APP_STATE_URL", "SERVE_APP_STATE_URL_FILE"})


def secret_name(name: str) -> bool:
    upper = name.upper()
    return not upper.endswith(_LOCATION_SUFFIXES) and bool(_SECRET_PARTS & set(re.split(r"[^A-Z0-9]+", upper)))


def plain_secret(name: str, value: Any) -> bool:
    """A secret's value written out (not a reference, not empty)."""
    return secret_name(str(name)) and bool(value) and not _REFERENCE.search(str(value))


def _env_maps(config: dict[str, Any]):
    """(field path, env_vars mapping) of every runtime_env of a plain Serve config."""
    if isinstance((config.get("runtime_env") or {}), dict) and isinstance(config.get("runtime_env", {}).get("env_vars"), dict):
        yield "runtime_env.env_vars", config["runtime_env"]["env_vars"]
    for i, app in enumerate(config.get("applications") or []):
        if not isinstance(app, dict):
            continue
        env = (app.get("runtime_env") or {}).get("env_vars") if isinstance(app.get("runtime_env"), dict) else None
        if isinstance(env, dict):
            yield f"applications[{i}].runtime_env.env_vars", env
        for d in app.get("deployments") or []:
            options = d.get("ray_actor_options") if isinstance(d, dict) else None
            runtime_env = options.get("runtime_env") if isinstance(options, dict) else None
            env = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
            if isinstance(env, dict):
                yield f"applications[{i}].deployments.{d.get('name')}.ray_actor_options.runtime_env.env_vars", env


def secret_problems(config: dict[str, Any]) -> list[str]:
    """The fields of ``config`` that hold a secret's value (empty: none)."""
    return [f"{where}.{name}" for where, env in _env_maps(config) for name, value in env.items()
            if plain_secret(name, value) or str(name) in PROCESS_ONLY]


def refusal(field: str) -> str:
    """Why ``field`` is refused (the value is never repeated)."""
    if field.rsplit(".", 1)[-1] in PROCESS_ONLY:
        return (f"{field}: the state store's location is read from the environment Ray runs with (on KubeRay, the "
                "pods'), not from a config: a config is what the store keeps, and a release cannot move the store "
                "its history is in (docs/operations.md, 'The state store')")
    return (f"{field} holds a secret's value: a config is kept in the release history, so it names secrets "
            "instead of carrying them; put the value in the environment Ray runs with (or a mounted file) and "
            "write ${NAME} here (docs/operations.md, 'Secrets')")


def check_secrets(config: dict[str, Any]) -> None:
    """Raise ValueError naming the first field that carries a secret's value."""
    problems = secret_problems(config)
    if problems:
        raise ValueError(refusal(problems[0]))


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every secret's value that is written out replaced by ``REDACTED``."""
    out = copy.deepcopy(config)
    for _, env in _env_maps(out):
        for name, value in env.items():
            if plain_secret(name, value):
                env[name] = REDACTED
    return out
