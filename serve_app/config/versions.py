"""Versions of the config's shape, and the migrations between them.

The release history stores whole configs and deploys them again much later (a rollback, the base of the next
release), possibly after the code has changed what a config looks like. So every stored config carries the
schema version it was written in, and every read of a stored config for a deploy goes through ``migrate``,
which upgrades it one version at a time to the shape this code deploys.

Versions:

    1   the shape releases were stored in before configs carried a version (rows without one are version 1)
    2   the same shape, numbered
    3   LLM deployments named by the model they serve: the first model's options, under ``deployments`` as
        ``LLMServer`` (its place) until 2, are ``LLMServer-<served name>`` like every other model's

A change of the shape (a renamed or moved setting, a restructured section) bumps ``CURRENT_VERSION`` and adds
the step from the previous version to ``MIGRATIONS``; the steps before it stay as they are, so a release
stored in any earlier version still deploys. A config stored by a newer serve_app than this one is refused:
this code cannot know what the newer shape means.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from serve_app.config.loader import APP_IMPORT_PATH, ConfigError
from serve_app.config.names import DEFAULT_MODEL, LLM_DEPLOYMENT, SERVED_NAMES, llm_deployment_name

CURRENT_VERSION = 3


def _v1_to_v2(config: dict[str, Any]) -> dict[str, Any]:
    # Version 2 introduced the version number itself, not a change of the shape.
    return config


def _first_served_name(args: dict[str, Any]) -> str | None:
    """The first model's served name in version-2 args, read from the raw mapping (a step works on the shape of
    its own version, not on the current settings): ``served_name``, else its source's (config/names.py)."""
    raw = args.get("model")
    model: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if model.get("enabled") is False:
        return None
    name = model.get("served_name") or SERVED_NAMES.get(model.get("source", DEFAULT_MODEL), model.get("source"))
    return name if isinstance(name, str) else None


def _v2_to_v3(config: dict[str, Any]) -> dict[str, Any]:
    for app in config.get("applications") or []:
        if not isinstance(app, dict) or app.get("import_path") != APP_IMPORT_PATH:
            continue
        args = app.get("args")
        first = _first_served_name(args if isinstance(args, dict) else {})
        for d in app.get("deployments") or []:
            if isinstance(d, dict) and d.get("name") == LLM_DEPLOYMENT and first:
                d["name"] = llm_deployment_name(first)
    return config


# MIGRATIONS[v] turns a config of version v into one of version v + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
}


class UnknownSchemaVersion(ConfigError):
    """A stored config of a schema version this code cannot read."""


def migrate(config: dict[str, Any], version: int) -> dict[str, Any]:
    """``config``, stored in schema ``version``, in the shape of ``CURRENT_VERSION`` (a new dict)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UnknownSchemaVersion(f"config schema version {version!r} is not a version (1..{CURRENT_VERSION})")
    if version > CURRENT_VERSION:
        raise UnknownSchemaVersion(
            f"config schema version {version} is newer than this serve_app's ({CURRENT_VERSION}): it was stored by "
            "a newer serve_app, whose config shape this one cannot read; deploy it with that version"
        )
    out = copy.deepcopy(config)
    for v in range(version, CURRENT_VERSION):
        out = MIGRATIONS[v](out)
    return out
