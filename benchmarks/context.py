"""What every benchmark scenario of the suite (benchmarks/suite.py) gets: the result folder, the size of the
run, the shared app (started on first use, or a running one), and small helpers."""

from __future__ import annotations

import secrets
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks._servers import ROOT, serve_app
from serve_app.admin_client import AdminClient

RESULTS = ROOT / "benchmarks" / "results"
# Service-level objectives of the goodput figure (CPU-sized; a GPU deployment would use tighter ones).
SLO = {"ttft": 500, "tpot": 100}


class Context:
    """What a scenario gets: where to write, how big to run, the shared app (started on first use)."""

    def __init__(self, out: Path, quick: bool, config: str, progress, url: str | None = None,
                 admin_key: str | None = None):
        self.out, self.quick, self.config, self.progress = out, quick, config, progress
        self.url, self.admin_key = url, admin_key
        self._stack = ExitStack()
        self._app: dict[str, Any] | None = None

    def app(self) -> dict[str, Any]:
        if self._app is None and self.url:
            # A running app (e.g. on a cluster, the suite submitted as a Ray job): used as it is.
            admin = self._stack.enter_context(AdminClient(self.url, self.admin_key))
            model = httpx.get(f"{self.url}/v1/models").json()["data"][0]["id"]
            self._app = {"url": self.url, "ready_s": 0.0, "admin": admin, "model": model}
        if self._app is None:
            data = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-app-bench-"))
            key = secrets.token_hex(16)
            env = {"SERVE_APP_DATA_DIR": data, "SERVE_APP_ADMIN_KEY": key}
            url, ready_s = self._stack.enter_context(serve_app(self.config, self.out / "app.log", env=env))
            admin = self._stack.enter_context(AdminClient(url, key))
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            self._app = {"url": url, "ready_s": ready_s, "admin": admin, "model": model}
        return self._app

    def close(self) -> None:
        self._stack.close()
        self._app = None

    def note(self, msg: str) -> None:
        self.progress.write(f"[bench] {msg}", file=sys.stderr)


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def deploy(admin: AdminClient, config: dict, note: str) -> dict:
    from benchmarks.releases import FOLLOW_TIMEOUT_S

    rel = admin.follow(admin.deploy(config, note)["release"], FOLLOW_TIMEOUT_S)
    if rel["status"] != "good":
        raise RuntimeError(f"release for the benchmark failed: {rel['outcome']}")
    return rel


def replicas(admin: AdminClient, name: str) -> int:
    try:
        return admin.status()["deployments"][name]["running_replicas"]
    except (httpx.HTTPError, KeyError, ValueError):
        return 0
