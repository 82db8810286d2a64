"""What the fault-injection tests share: following releases (through the admin client,
serve_app/admin_client.py), waiting for a deployment's replicas (polled with tests/polling.py), finding the
process of a Serve component in the session app's process tree (ended by process id, never by name), and
/healthz's 1 s contract sampled through a fault."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import psutil

from serve_app.admin_client import AdminClient, AdminError
from tests.names import LLM
from tests.polling import WaitTimeout, wait_until


def follow(admin: AdminClient, n: int, timeout_s: float = 600) -> dict:
    """Release n once it has settled; it must be readable (200) and settle within timeout_s."""
    try:
        return admin.follow(n, timeout_s)
    except (AdminError, TimeoutError) as exc:
        raise AssertionError(str(exc)) from None


def current_config(admin: AdminClient) -> dict:
    return admin.current_config()


def _good(admin: AdminClient, start: Callable[[], dict]) -> dict:
    """Follow the release an admin call started: the call must be accepted (202, else the client raises
    AdminError) and the release must end good."""
    try:
        accepted = start()
    except AdminError as exc:
        raise AssertionError(str(exc)) from None
    rel = follow(admin, accepted["release"])
    assert rel["status"] == "good", rel
    return rel


def deploy(admin: AdminClient, config: dict, note: str) -> dict:
    return _good(admin, lambda: admin.deploy(config, note))


def scale(admin: AdminClient, deployment: str, replicas: int) -> dict:
    return _good(admin, lambda: admin.scale(deployment, replicas))


def scale_together(admin: AdminClient, replicas: dict[str, int]) -> dict:
    """Scale several deployments in one release (as ``serve-app scale`` scales one: autoscaling bounds pinned),
    so their replicas start, or drain, at the same time rather than one release after the other."""
    from serve_app.release.plan import scaled

    config = admin.current_config()
    app = config["applications"][0]
    for name, n in replicas.items():
        app = scaled({"applications": [app]}, app["name"], name, n, None)[0]
    config["applications"][0] = app
    return deploy(admin, config, "scale " + ", ".join(f"{k} to {v}" for k, v in replicas.items()))


def running_replicas(admin: AdminClient, deployment: str) -> int:
    d = admin.status()["deployments"][deployment]
    return d["running_replicas"] if d["status"] == "HEALTHY" else -1


def wait_replicas(admin: AdminClient, deployment: str, n: int, timeout_s: float = 300) -> float:
    """Wait until the deployment is HEALTHY with n running replicas; returns the time it happened."""
    wait_until(lambda: running_replicas(admin, deployment), timeout_s, until=lambda running: running == n,
               what=f"{deployment} HEALTHY with {n} running replicas (-1: not HEALTHY)",
               ignore=(httpx.HTTPError, KeyError, ValueError))  # AdminError is an httpx.HTTPError
    return time.time()


def llm_replica_pids(http: httpx.Client, n: int, timeout_s: float = 60) -> dict[str, int]:
    """{replica id: pid} of the LLM replicas, from /healthz (which reaches a replica at random)."""
    seen: dict[str, int] = {}

    def look() -> dict[str, int]:
        llm = http.get("/healthz").json()["components"][LLM]
        if llm.get("status") == "ok":
            seen[llm["replica"]] = llm["pid"]
        return seen

    # Each Ingress replica probes a replica of the LLM every health period: looked at often.
    return wait_until(look, timeout_s, interval_s=0.2, until=lambda replicas: len(replicas) >= n,
                      what=f"{n} LLM replicas seen through /healthz")


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
    """Whether every process of ``pids`` has exited (or is a zombie) within ``timeout_s``."""
    try:
        wait_until(lambda: not any(_alive(p) for p in pids), timeout_s, what=f"processes {pids} gone")
    except WaitTimeout:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# /healthz's contract with readiness probes (Kubernetes' default timeout): an answer within 1 s whatever the
# components do. The ingress answers from memory in milliseconds; what a fault test measures end to end also
# holds the HTTP proxy and the test's own client, which on a 2-core machine share the CPU with the engine
# that replaces the killed one (it takes every core while it starts). So: the p99 within the contract plus a
# margin of 1 s for that contention, and every poll answered within the client's 5 s. A /healthz that waited on a
# component would miss both (before the background probes, it did not answer for ~20 s); a single answer a few
# tenths over the bound while a new engine takes both cores does not say that (seen once in ~400 polls).
HEALTHZ_CONTRACT_S = 1.0
HEALTHZ_MARGIN_S = 1.0


class HealthSampler:
    """Polls /healthz in a thread while a fault plays out (every ``period_s``, client timeout 5 s), recording
    each answer's latency and status: the figures of the 1 s contract."""

    def __init__(self, url: str, period_s: float = 0.1):
        self.url, self.period_s = url, period_s
        self.samples: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    status: int | str = c.get("/healthz").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.samples.append((time.perf_counter() - t, status))
                self._stop.wait(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def figures(self) -> dict:
        latencies = sorted(s[0] for s in self.samples)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None
        return {"healthz_answers": len(latencies), "healthz_p99_ms": p99 and round(p99 * 1000, 1),
                "healthz_max_ms": latencies and round(latencies[-1] * 1000, 1),
                "healthz_503s": sum(s[1] == 503 for s in self.samples)}

    def check(self) -> None:
        latencies = sorted(s[0] for s in self.samples)
        assert latencies, "/healthz was never polled"
        unanswered = [s for s in self.samples if not isinstance(s[1], int)]
        assert not unanswered, f"/healthz did not answer: {unanswered[:5]} ({self.figures()})"
        late = [s for s in self.samples if s[0] > HEALTHZ_CONTRACT_S + HEALTHZ_MARGIN_S]
        # The p99 within the bound: at most 1 % of the answers (and at least one allowed) over it.
        assert len(late) <= max(1, len(self.samples) // 100), \
            f"/healthz answered late: {late[:5]} ({self.figures()})"

    def p99_s(self) -> float:
        latencies = sorted(s[0] for s in self.samples)
        return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


def background_stream(url: str, body: dict, start_timeout_s: float = 120) -> tuple[threading.Thread, list[str]]:
    """A streaming chat request running in a thread, returned once its first event has arrived: the thread and
    the list its events' payloads are appended to (``[DONE]`` last when it ends whole)."""
    lines: list[str] = []
    first = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
                    first.set()

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    assert first.wait(start_timeout_s), "the stream did not start"
    return t, lines
