"""Where the application keeps what it writes, in one place: models it prepares (a cache: rebuilt when lost),
data (the embedded vector store), and state (the release history and audit log).

    $SERVE_APP_CACHE_DIR    else $XDG_CACHE_HOME/serve_app, else ~/.cache/serve_app
    $SERVE_APP_DATA_DIR     else ~/.local/share/serve_app
      vector/<backend>        the embedded store (args.vector.path overrides it)
      releases/               release history and audit ($SERVE_APP_STATE_DIR overrides it)

On a cluster, data and state belong on storage every node that may hold the replica can reach.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("SERVE_APP_CACHE_DIR"):
        return Path(os.environ["SERVE_APP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "serve_app"


def data_dir() -> Path:
    return Path(os.environ.get("SERVE_APP_DATA_DIR") or Path.home() / ".local" / "share" / "serve_app")


def vector_dir(backend: str) -> Path:
    return data_dir() / "vector" / backend


def state_dir() -> Path:
    base = os.environ.get("SERVE_APP_STATE_DIR")
    return Path(base) if base else data_dir() / "releases"
