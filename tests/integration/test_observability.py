"""Metrics scraped by a real Prometheus (the project's scrape config, cluster/prometheus/prometheus.yml), the
app's /metrics relay, bounded labels, and the Grafana dashboard's queries against what is exported.

Ray's metrics agent exports what the replicas recorded every few seconds, so values are polled for (bounded),
never assumed after a fixed sleep.
"""

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from serve_app.observability.metrics import DEFINITIONS, exported_name

ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(app_url, tmp_path_factory):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (make test installs it: make test-tools)"
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ROOT / "cluster/prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "serve_app")
    job["static_configs"] = [{"targets": [app_url.removeprefix("http://")]}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = open(work / "prometheus.log", "w")
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(60):
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _query(prom: str, expr: str) -> float | None:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, r.text
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _wait_for(prom: str, expr: str, predicate, timeout_s: float = 120.0) -> float | None:
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = _query(prom, expr)
        if value is not None and predicate(value):
            return value
        time.sleep(1)
    raise AssertionError(f"{expr} = {value} after {timeout_s:g}s")


def _stable(prom: str, expr: str) -> float:
    """The value once it has stopped moving (replicas export every few seconds)."""
    last, same_since = None, time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        value = _query(prom, expr)
        if value != last:
            last, same_since = value, time.monotonic()
        elif value is not None and time.monotonic() - same_since > 12:
            return value
        time.sleep(1)
    raise AssertionError(f"{expr} never settled (last {last})")


def test_prometheus_sees_the_request_counter_and_ttft_histogram(prometheus, http, model_name):
    requests = f'sum(ray_serve_app_http_requests_total{{route="{CHAT}",method="POST",status="200"}})'
    ttft = f'sum(ray_serve_app_llm_time_to_first_token_seconds_count{{route="{CHAT}"}})'
    ttft_inf = f'sum(ray_serve_app_llm_time_to_first_token_seconds_bucket{{route="{CHAT}",le="+Inf"}})'
    body = {"model": model_name, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}
    # One streamed request so that both series exist, then the values before this test's traffic.
    with http.stream("POST", CHAT, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and list(r.iter_lines())
    _wait_for(prometheus, ttft, lambda v: v >= 1)
    before_requests, before_ttft = _stable(prometheus, requests), _stable(prometheus, ttft)

    for _ in range(5):
        assert http.post(CHAT, json=body).status_code == 200
    for _ in range(3):
        with http.stream("POST", CHAT, json={**body, "stream": True}) as r:
            assert r.status_code == 200 and [x for x in r.iter_lines() if x][-1] == "data: [DONE]"
    assert http.post(CHAT, json={**body, "max_tokens": 0}).status_code == 400  # counted under its own status

    assert _wait_for(prometheus, requests, lambda v: v >= before_requests + 8) == before_requests + 8
    assert _wait_for(prometheus, ttft, lambda v: v >= before_ttft + 3) == before_ttft + 3
    assert _query(prometheus, ttft_inf) == before_ttft + 3
    bad = f'sum(ray_serve_app_http_requests_total{{route="{CHAT}",status="400"}})'
    assert _wait_for(prometheus, bad, lambda v: v >= 1) >= 1
    # The release the ingress serves, and the engine's own metrics through the same endpoint.
    assert _wait_for(prometheus, "max(ray_serve_app_release_info)", lambda v: v == 1) == 1
    assert _wait_for(prometheus, "sum(ray_vllm_time_to_first_token_seconds_count)", lambda v: v >= 1) >= 1


def test_labels_never_carry_request_content(http):
    secret = "label-must-not-carry-this-3f9c"
    assert http.get(f"/v1/documents/{secret}").status_code == 404
    assert http.post("/v1/search", json={"query": secret, "top_k": 1}).status_code == 200
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = http.get("/metrics").text
        if 'route="/v1/documents/{document_id:path}"' in text and 'route="/v1/search"' in text:
            break
        time.sleep(2)
    assert 'route="/v1/documents/{document_id:path}"' in text, "the route template is the label"
    assert secret not in text


def test_grafana_dashboard_queries_name_exported_metrics(http):
    dashboard = json.loads((ROOT / "cluster/grafana/serve_app.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert len(exprs) >= 10
    # The app's metrics by their declarations (some only appear after an event, e.g. a tool error);
    # Serve's and vLLM's by what the running app exports.
    ours = {exported_name(n) + suffix for n, (kind, *_rest) in DEFINITIONS.items()
            for suffix in ({"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}[kind])}
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", http.get("/metrics").text, re.M))
    names = {n for e in exprs for n in re.findall(r"\b(ray_[a-zA-Z0-9_]+)", e)}
    assert names, exprs
    unknown = {n for n in names if n not in ours and n not in exported}
    assert not unknown, f"dashboard queries name metrics nobody exports: {sorted(unknown)}"
    covered = {n.split("_")[3] if n.startswith("ray_serve_app_") else n.split("_")[1] for n in names}
    assert {"http", "llm", "vector", "agent", "release", "vllm", "serve"} <= covered, covered
