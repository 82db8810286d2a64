"""The cluster tier's one Ray cluster on this machine, shared by its tests (one cluster start, not one per
test): a head (`ray start --head`, with the dashboard's job server) and a worker node that alone advertises
the custom resource `llm`, each with its own raylet; the app deployed from configs/cluster.yaml on the tiny
model (placement, recovery and batch ingest are tested here, not what the model says), reached through the
head's HTTP proxy. The tier runs before the session app starts (tests/conftest.py), so no other engine runs.
Tests that change the cluster (a node lost) run after those that only use it: batch ingest first (file order).
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.names import DEPLOYMENT, TINY_DEPLOYMENT
from tests.polling import WaitTimeout, wait_until
from tests.procs import stop_tree, stop_trees

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node(args, log: Path, env):
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args], cwd=log.parent,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _worker(gcs: int, tmp: Path, env, n: int):
    agent, agent_grpc, rt_agent, metrics = _ports(4)
    return _node(["--address", f"127.0.0.1:{gcs}", "--num-cpus", "1", "--resources", '{"llm": 1}',
                  "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                  "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics)],
                 tmp / f"worker-{n}.log", env)


def _wait(what: str, check, timeout_s: float, logs: list[Path]):
    """``check``'s first truthy value (polled every second; an HTTP error is a "not yet"); past ``timeout_s``
    a failure saying ``what`` did not happen, with the tails of the cluster's ``logs``."""
    try:
        return wait_until(check, timeout_s, interval_s=1, ignore=(httpx.HTTPError,))
    except WaitTimeout as exc:
        tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
        raise AssertionError(f"{what} within {timeout_s:g}s (last: {exc.last!r})\n{tails}") from None


def _tree(proc) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    gcs, dash, agent, agent_grpc, rt_agent, metrics, client, http_port = _ports(8)
    env = {**os.environ, "SERVE_APP_DATA_DIR": str(tmp / "data"), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = _node(["--head", "--port", str(gcs), "--num-cpus", "1",
                  "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                  "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                  "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics),
                  "--ray-client-server-port", str(client)], tmp / "head.log", env)
    state = {"tmp": tmp, "env": env, "gcs": gcs, "url": f"http://127.0.0.1:{http_port}", "head": head,
             "workers": [], "app": None, "dashboard": f"http://127.0.0.1:{dash}"}
    try:
        state["workers"].append(_worker(gcs, tmp, env, 1))
        app_log = tmp / "app.log"
        # The shipped cluster config on the tiny model: what is tested is placement and recovery, not what the
        # model says.
        config = yaml.safe_load((ROOT / "configs/cluster.yaml").read_text())
        config["applications"][0]["args"]["model"] = {"source": "tiny"}
        for d in config["applications"][0]["deployments"]:  # its deployment is named by the model it serves
            d["name"] = TINY_DEPLOYMENT if d["name"] == DEPLOYMENT else d["name"]
        (tmp / "cluster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        state["app"] = subprocess.Popen(
            [sys.executable, "-m", "serve_app.cli", "run", "--config", str(tmp / "cluster.yaml"),
             "--address", f"127.0.0.1:{gcs}", "--port", str(http_port)],
            cwd=ROOT, stdout=open(app_log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        logs = [app_log, tmp / "head.log", tmp / "worker-1.log"]
        _wait("the app was not healthy", lambda: httpx.get(f"{state['url']}/healthz", timeout=5).status_code == 200
              and state["app"].poll() is None, 600, logs)
        state["logs"] = logs
        yield state
    finally:
        # The app first (it undeploys through the cluster), then every node at once.
        left = stop_tree(state["app"], signal.SIGTERM, 90)[1] if state["app"] is not None else []
        # The nodes: every process at once, by SIGKILL (what is tested is the app's stop above and node loss in
        # the test; a node's own graceful stop takes tens of seconds here).
        left += stop_trees([*state["workers"], head], signal.SIGKILL, 90, whole_tree=True)
        assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"
