"""Batch ingest as a Ray job: on a real Ray head started with `ray start --head` on loopback, running a
retrieval-only app, `ray job submit ... python -m serve_app.jobs.ingest FOLDER` ingests every file, prints
the final count, the documents are searchable, and a second run changes nothing (idempotent)."""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.procs import stop_tree

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    gcs, dash, agent, agent_grpc, rt_agent, metrics, http_port, client = _ports(8)
    # Ray clusters authenticate with a token; every process of this test (head, app driver, job CLI)
    # gets the same one explicitly instead of depending on a token file in the home directory.
    env = {
        **os.environ,
        "SERVE_APP_DATA_DIR": str(tmp / "data"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    head_log = open(tmp / "head.log", "w")
    head = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head", "--block",
            "--port", str(gcs),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics),
            "--ray-client-server-port", str(client), "--num-cpus", "2", "--disable-usage-stats",
        ],
        cwd=tmp, stdout=head_log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    app = None
    try:
        dash_url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 120
        while True:
            try:
                # Any answer means the dashboard (job server) is up; it may require a token (401).
                if httpx.get(f"{dash_url}/api/version", timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            assert head.poll() is None and time.monotonic() < deadline, (tmp / "head.log").read_text()[-3000:]
            time.sleep(1)

        # A retrieval-only variant of the default config: no LLM deployment.
        config = yaml.safe_load((ROOT / "configs/dev-cpu.yaml").read_text())
        application = config["applications"][0]
        application["args"]["model"]["enabled"] = False
        application["deployments"] = [d for d in application["deployments"] if d["name"] not in ("LLMServer", "Agent")]
        cfg = tmp / "retrieval.yaml"
        cfg.write_text(yaml.safe_dump(config))
        app_log = open(tmp / "app.log", "w")
        app = subprocess.Popen(
            [sys.executable, "-m", "serve_app.cli", "run", "--config", str(cfg), "--address", f"127.0.0.1:{gcs}", "--port", str(http_port)],
            cwd=ROOT, stdout=app_log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert app.poll() is None and time.monotonic() < deadline, (tmp / "app.log").read_text()[-3000:]
            time.sleep(1)
        yield {"dashboard": dash_url, "url": url, "tmp": tmp, "env": env}
    finally:
        left = stop_tree(app, timeout_s=60)[1] if app is not None else []
        left += stop_tree(head, timeout_s=60, whole_tree=True)[1]
        assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"


def _corpus(folder: Path) -> int:
    (folder / "guides").mkdir(parents=True)
    topics = ["volcanoes", "honeybees", "glaciers", "lighthouses", "tidepools", "comets"]
    for i, t in enumerate(topics):
        body = " ".join(f"Fact {j} about {t}: {t} are fascinating subject number {j}." for j in range(30 + 10 * i))
        (folder / ("guides" if i % 2 else ".") / f"{t}.md").write_text(f"# {t.title()}\n\n{body}\n")
    (folder / "empty.txt").write_text("   \n")
    (folder / "ignored.csv").write_text("a,b\n")
    return len(topics)


def _submit(cluster, folder):
    r = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], "--",
         sys.executable, "-m", "serve_app.jobs.ingest", str(folder), "--batch-size", "2"],
        capture_output=True, text=True, timeout=600, env=cluster["env"],
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in r.stdout, r.stdout[-3000:]
    counts = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"documents"')]
    assert counts, r.stdout[-3000:]
    return counts[-1]


def test_ray_job_ingest_is_searchable_and_idempotent(cluster):
    folder = cluster["tmp"] / "corpus"
    n_docs = _corpus(folder)
    first = _submit(cluster, folder)
    assert first["documents"] == n_docs and first["chunks"] > n_docs

    with httpx.Client(base_url=cluster["url"], timeout=60) as http:
        chunks_after_first = http.get("/healthz").json()["components"]["vector"]["chunks"]
        assert chunks_after_first == first["chunks"]
        hits = http.post("/v1/search", json={"query": "facts about glaciers", "top_k": 3}).json()["results"]
        assert hits[0]["document_id"] == "glaciers.md"
        assert http.get("/v1/documents/guides/honeybees.md").json()["metadata"] == {"source": "guides/honeybees.md", "suffix": "md"}

        second = _submit(cluster, folder)
        assert second == first
        assert http.get("/healthz").json()["components"]["vector"]["chunks"] == chunks_after_first
        # The LLM is not part of this application.
        assert http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 404
