"""serve_app: an LLM serving stack as Ray Serve applications, one per component (vLLM, retrieval, agents,
releases with rollback).

The public names:

    AppSettings          the app's settings (the ``args:`` block of a Serve config)
    load_serve_config    a Serve config file -> (Serve's schema, {application: AppSettings}); ConfigError
    build_app            what every config names (``serve_app.app:build_app``): the plain form, expanded into
                         one Serve application per component (serve_app/config/apps.py)
    AdminClient          the admin API of a running app (releases, rollback, scale, status, audit); AdminError
    __version__          the installed distribution's version

They are imported on first use: ``import serve_app`` imports neither Ray nor vLLM (the CLI, the admin client
and every Ray worker that unpickles one of our classes import this package first).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve_app.admin_client import AdminClient, AdminError
    from serve_app.app import build_app
    from serve_app.config.loader import ConfigError, load_serve_config
    from serve_app.config.settings import AppSettings

_LAZY = {
    "AppSettings": "serve_app.config.settings",
    "ConfigError": "serve_app.config.loader",
    "load_serve_config": "serve_app.config.loader",
    "build_app": "serve_app.app",
    "AdminClient": "serve_app.admin_client",
    "AdminError": "serve_app.admin_client",
}

__all__ = ["AdminClient", "AdminError", "AppSettings", "ConfigError", "__version__", "build_app", "load_serve_config"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("serve_app")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        value = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'serve_app' has no attribute {name!r}")
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
