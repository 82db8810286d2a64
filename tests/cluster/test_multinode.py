"""A real two-node Ray cluster on this machine: a head (`ray start --head`) and a worker node that alone
advertises the custom resource `llm`, each with its own raylet. The app is deployed from
configs/cluster.yaml: the LLM replica lands on the worker, every other deployment on the head, and requests
go through the head's HTTP proxy with the unmodified `openai` client. When the worker node stops, the app
reports the LLM unhealthy (503 from /healthz naming the component) and LLM requests get a fast 503 with
Retry-After (never a hang); when a worker node joins again, Serve places the LLM replica on it and the app
serves again without any manual action.

Runs before the session app starts (the cluster tier comes second: tests/conftest.py), so no other engine is
running. The model is the tiny one: this is about placement and recovery, not content.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.procs import stop_tree, stop_trees

pytestmark = pytest.mark.cluster

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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} within {timeout_s:g}s\n{tails}")


def _tree(proc) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    gcs, dash, agent, agent_grpc, rt_agent, metrics, client, http_port = _ports(8)
    env = {**os.environ, "SERVE_APP_DATA_DIR": str(tmp / "data"), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = _node(["--head", "--port", str(gcs), "--num-cpus", "1", "--include-dashboard", "false",
                  "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                  "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics),
                  "--ray-client-server-port", str(client)], tmp / "head.log", env)
    state = {"tmp": tmp, "env": env, "gcs": gcs, "url": f"http://127.0.0.1:{http_port}", "head": head,
             "workers": [], "app": None}
    try:
        state["workers"].append(_worker(gcs, tmp, env, 1))
        app_log = tmp / "app.log"
        # The shipped cluster config on the tiny model: what is tested is placement and recovery, not what the
        # model says.
        config = yaml.safe_load((ROOT / "configs/cluster.yaml").read_text())
        config["applications"][0]["args"]["model"] = {"source": "tiny"}
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
        left += stop_trees([*state["workers"], head], signal.SIGTERM, 90, whole_tree=True)
        assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"


def test_llm_on_the_worker_lost_with_it_and_back_when_a_worker_joins(cluster):
    import openai

    url, logs = cluster["url"], cluster["logs"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    health = httpx.get(f"{url}/healthz").json()["components"]
    # Placement: the LLM replica is a process of the worker node, the vector store one of the head.
    assert health["llm"]["pid"] in _tree(cluster["workers"][0]), "the LLM replica is not on the worker node"
    assert health["vector"]["pid"] in _tree(cluster["head"]), "the vector store is not on the head node"
    model = client.models.list().data[0].id
    answer = client.chat.completions.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content is not None

    # The worker node goes away (its raylet and every process on it).
    stop_tree(cluster["workers"][0], signal.SIGTERM, 90)
    lost_at = time.monotonic()
    down = _wait("/healthz did not report the LLM unhealthy",
                 lambda: (r := httpx.get(f"{url}/healthz", timeout=30)).status_code == 503 and r.json(), 180, logs)
    assert down["components"]["llm"]["status"] == "unhealthy", down
    assert down["components"]["vector"]["status"] == "ok", down
    # LLM requests: a clear 503 with Retry-After, answered at once once the ingress has noticed.
    refused = _wait("chat requests were not refused with a fast 503",
                    lambda: (r := httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})).status_code == 503
                    and r, 180, logs)
    assert refused.headers["retry-after"] and refused.json()["error"]["code"] == 503
    # Retrieval, on the head, still serves.
    assert httpx.post(f"{url}/v1/search", json={"query": "anything", "top_k": 1}).status_code == 200
    unavailable_s = time.monotonic() - lost_at

    # A worker joins again: no action on the app; Serve places the pending LLM replica on it.
    cluster["workers"].append(_worker(cluster["gcs"], cluster["tmp"], cluster["env"], 2))
    logs.append(cluster["tmp"] / "worker-2.log")
    _wait("the app did not recover", lambda: httpx.get(f"{url}/healthz", timeout=30).status_code == 200, 600, logs)
    assert httpx.get(f"{url}/healthz").json()["components"]["llm"]["pid"] in _tree(cluster["workers"][1])
    answer = client.chat.completions.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content is not None
    print(f"LLM unavailable {unavailable_s:.0f}s after the node loss until refused fast; recovered")
