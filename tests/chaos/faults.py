"""What the fault-injection tests share: waiting for the app, following releases, finding the process of a
Serve component in the session app's process tree (ended by process id, never by name)."""

from __future__ import annotations

import copy
import time

import httpx
import psutil


def wait_healthy(http: httpx.Client, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = http.get("/healthz", timeout=10)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the app was not healthy again within {timeout_s:g}s")


def follow(admin: httpx.Client, n: int, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = admin.get(f"/admin/releases/{n}")
        assert r.status_code == 200, r.text
        if r.json()["status"] != "deploying":
            return r.json()
        time.sleep(0.5)
    raise AssertionError(f"release {n} still deploying after {timeout_s}s")


def current_config(admin: httpx.Client) -> dict:
    n = admin.get("/admin/status").json()["current_release"]
    return copy.deepcopy(admin.get(f"/admin/releases/{n}").json()["config"])


def _good(admin: httpx.Client, r: httpx.Response) -> dict:
    """Follow the release an accepted admin call started; it must end good."""
    assert r.status_code == 202, r.text
    rel = follow(admin, r.json()["release"])
    assert rel["status"] == "good", rel
    return rel


def deploy(admin: httpx.Client, config: dict, note: str) -> dict:
    return _good(admin, admin.post("/admin/releases", json={"config": config, "note": note}))


def scale(admin: httpx.Client, deployment: str, replicas: int) -> dict:
    return _good(admin, admin.post("/admin/scale", json={"deployment": deployment, "replicas": replicas}))


def running_replicas(admin: httpx.Client, deployment: str) -> int:
    d = admin.get("/admin/status").json()["deployments"][deployment]
    return d["running_replicas"] if d["status"] == "HEALTHY" else -1


def wait_replicas(admin: httpx.Client, deployment: str, n: int, timeout_s: float = 300) -> float:
    """Wait until the deployment is HEALTHY with n running replicas; returns the time it happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if running_replicas(admin, deployment) == n:
                return time.time()
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{deployment} did not reach {n} healthy replicas within {timeout_s:g}s")


def llm_replica_pids(http: httpx.Client, n: int, timeout_s: float = 60) -> dict[str, int]:
    """{replica id: pid} of the LLM replicas, from /healthz (which reaches a replica at random)."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < n and time.monotonic() < deadline:
        llm = http.get("/healthz").json()["components"]["llm"]
        if llm.get("status") == "ok":
            seen[llm["replica"]] = llm["pid"]
    assert len(seen) >= n, f"saw {len(seen)} LLM replicas, expected {n}"
    return seen


def titled(root_pid: int, title: str) -> list[psutil.Process]:
    """Processes of the tree under ``root_pid`` whose command line (a Ray worker's process title, e.g.
    ``ray::ServeController``) starts with ``title``."""
    found = []
    for p in psutil.Process(root_pid).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(title):
                found.append(p)
        except psutil.Error:
            pass
    return found


def gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.5)
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
