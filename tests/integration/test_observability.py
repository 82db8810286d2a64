"""Metrics scraped by a real Prometheus (the project's scrape config, cluster/prometheus/prometheus.yml), the
app's /metrics relay, bounded labels, and the Grafana dashboard's queries against what is exported.

Ray's metrics agent exports what the replicas recorded every few seconds, so values are polled for (bounded,
tests/polling.py), never assumed after a fixed sleep.
"""

import contextlib
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
from tests.names import DEPLOYMENT
from tests.polling import WaitTimeout, wait_until

pytestmark = pytest.mark.app

ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"
# Unchanged for this long: every replica has exported since (Ray's agent exports every 10 s).
SETTLED_S = 12


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

    def ready() -> bool:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
        return False

    try:
        # Not ready within 30 s: the tests go on regardless (their queries then fail on what does not answer).
        with contextlib.suppress(WaitTimeout):
            wait_until(ready, 30, interval_s=0.5, what="Prometheus ready")
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


def _wait_for(prom: str, expr: str, predicate, timeout_s: float = 120.0) -> float:
    """The value of ``expr`` once there is one and ``predicate`` holds for it."""
    return wait_until(lambda: _query(prom, expr), timeout_s, interval_s=1,
                      until=lambda value: value is not None and predicate(value), what=expr)


def _stable(prom: str, *exprs: str) -> list[float]:
    """The values once none of them has moved for a while (replicas export every few seconds); watched
    together, so the wait is one settling period, not one per expression."""
    last, same_since = None, time.monotonic()

    def look() -> tuple[list[float | None], bool]:
        """The values, and whether they have settled."""
        nonlocal last, same_since
        values = [_query(prom, e) for e in exprs]
        if values != last:
            last, same_since = values, time.monotonic()
            return values, False
        return values, None not in values and time.monotonic() - same_since > SETTLED_S

    values, _ = wait_until(look, 120, interval_s=1, until=lambda seen: seen[1], what=f"{exprs} settled")
    return values


def test_prometheus_sees_the_request_counter_and_ttft_histogram(prometheus, http, model_name):
    requests = f'sum(ray_serve_app_http_requests_total{{route="{CHAT}",method="POST",status="200"}})'
    ttft = f'sum(ray_serve_app_llm_time_to_first_token_seconds_count{{route="{CHAT}"}})'
    ttft_inf = f'sum(ray_serve_app_llm_time_to_first_token_seconds_bucket{{route="{CHAT}",le="+Inf"}})'
    body = {"model": model_name, "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}
    # One streamed request so that both series exist, then the values before this test's traffic.
    with http.stream("POST", CHAT, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and list(r.iter_lines())
    _wait_for(prometheus, ttft, lambda v: v >= 1)
    before_requests, before_ttft = _stable(prometheus, requests, ttft)

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
    # The same prompt eight times: the prefix cache's hits, per model and replica (the dashboard's hit rate).
    hits = f'sum(ray_vllm_prefix_cache_hits_total{{model_name="{model_name}",ReplicaId!=""}})'
    assert _wait_for(prometheus, hits, lambda v: v >= 1) >= 1


def test_labels_never_carry_request_content(http):
    secret = "label-must-not-carry-this-3f9c"
    assert http.get(f"/v1/documents/{secret}").status_code == 404
    assert http.post("/v1/search", json={"query": secret, "top_k": 1}).status_code == 200

    def both_routes(text: str) -> bool:
        return 'route="/v1/documents/{document_id:path}"' in text and 'route="/v1/search"' in text

    # Both routes' series are waited for (60 s); only the documents route is required, in the last scrape.
    try:
        text = wait_until(lambda: http.get("/metrics").text, 60, interval_s=2, until=both_routes,
                          what="both routes in /metrics")
    except WaitTimeout as exc:
        text = exc.last
    assert 'route="/v1/documents/{document_id:path}"' in text, "the route template is the label"
    assert secret not in text


def _declared_upstream(name: str) -> bool:
    """Whether the installed vLLM (``vllm:x`` → ``ray_vllm_x``) or Ray Serve (``serve_x`` → ``ray_serve_x``)
    declares the metric this exported name comes from."""
    import ray.serve
    import vllm

    base = re.sub(r"_(total|bucket|count|sum)$", "", name.removeprefix("ray_"))
    if base.startswith("vllm_"):
        needle, root = f'"vllm:{base[len("vllm_"):]}"', Path(vllm.__file__).parent / "v1" / "metrics"
    else:
        needle, root = f'"{base}"', Path(ray.serve.__file__).parent
    return any(needle in p.read_text(errors="ignore") for p in root.rglob("*.py"))


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
    # Engine gauges (running/waiting requests, KV cache) are only exported while the engine reports stats, so a
    # name absent from this scrape must at least be declared by the installed vLLM or Ray Serve.
    unknown = {n for n in names if n not in ours and n not in exported and not _declared_upstream(n)}
    assert not unknown, f"dashboard queries name metrics nobody exports: {sorted(unknown)}"
    covered = {n.split("_")[3] if n.startswith("ray_serve_app_") else n.split("_")[1] for n in names}
    assert {"http", "llm", "vector", "agent", "release", "vllm", "serve"} <= covered, covered


def _spans(trace_dir: Path, tid: str, want: set[str], timeout_s: float = 60.0) -> list[dict]:
    def look() -> list[dict]:
        spans = []
        for path in trace_dir.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                try:
                    s = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if s["context"]["trace_id"] == f"0x{tid}":
                    spans.append({**s, "file": path.name})
        return spans

    def complete(spans: list[dict]) -> bool:
        """Every wanted span, and every parent exported (Serve's own spans end last)."""
        ids = {s["context"]["span_id"] for s in spans}
        return want <= {s["name"] for s in spans} and sum(1 for s in spans if s["parent_id"] not in ids) == 1

    try:
        return wait_until(look, timeout_s, interval_s=1, until=complete, what=f"trace {tid} complete")
    except WaitTimeout as exc:
        spans = exc.last
    ids = {s["context"]["span_id"] for s in spans}
    raise AssertionError(f"trace {tid}: missing spans {sorted(want - {s['name'] for s in spans})}; have "
                         f"{sorted((s['name'], s['parent_id'] in ids) for s in spans)} (name, parent exported)")


def _check_tree(spans: list[dict]) -> dict[str, list[str]]:
    """One connected tree: exactly one span without a parent in the trace. Returns parent name → child names."""
    ids = {s["context"]["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_id"] not in ids]
    assert len(roots) == 1, [(s["name"], s["parent_id"]) for s in roots]
    children: dict[str, list[str]] = {}
    for s in spans:
        if s["parent_id"] in ids:
            children.setdefault(ids[s["parent_id"]]["name"], []).append(s["name"])
    return children


def test_a_rag_answer_is_one_trace_across_the_deployments(http, trace_dir, model_name):
    assert http.post("/v1/documents", json={"documents": [
        {"id": "trace-doc", "text": "The lighthouse on the north cape was built in 1871 from granite."}]}).status_code == 200
    r = http.post("/v1/rag", json={"question": "When was the lighthouse built?", "max_tokens": 8})
    assert r.status_code == 200, r.text
    tid = r.headers["x-trace-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", tid)
    # Model calls and vector searches named by OpenTelemetry's GenAI and database conventions.
    want = {"POST /v1/rag", "rag.prepare", "rag.retrieval", "rag.answer", f"chat {model_name}",
            "search documents"}
    spans = _spans(trace_dir, tid, want)
    search = next(s for s in spans if s["name"] == "search documents")
    assert search["attributes"]["db.system.name"] == "qdrant" and search["attributes"]["db.collection.name"] == "documents"
    children = _check_tree(spans)
    assert {"rag.prepare", "rag.answer"} <= set(children["POST /v1/rag"])
    assert children["rag.prepare"] == ["rag.retrieval"]
    # The spans come from several processes (ingress, vector store, embedder, LLM replicas: one span file
    # per process), linked into one tree by Serve's context propagation.
    assert len({s["file"] for s in spans}) >= 3, {s["file"] for s in spans}


def test_an_agent_answer_is_one_trace_with_its_steps_and_tools(http, trace_dir, model_name):
    r = http.post("/v1/agent", json={"task": "What is 12 * 7? Use the calculator.", "max_steps": 3})
    assert r.status_code == 200, r.text
    tid = r.headers["x-trace-id"]
    steps = r.json()["steps"]
    run = "invoke_agent serve_app.agent"
    want = {"POST /v1/agent", run, "agent.step", f"chat {model_name}"}
    want |= {f"execute_tool {s['tool']}" for s in steps if s.get("tool_ms") is not None}
    spans = _spans(trace_dir, tid, want)
    children = _check_tree(spans)
    assert sum(1 for s in spans if s["name"] == "agent.step") == len(steps)
    assert children[run] == ["agent.step"] * len(steps)
    # Each step span (by id) has its own LLM call under it.
    for step in (s for s in spans if s["name"] == "agent.step"):
        assert any(x["name"] == f"chat {model_name}" and x["parent_id"] == step["context"]["span_id"] for x in spans), step
    assert len({s["file"] for s in spans}) >= 3, {s["file"] for s in spans}  # ingress, agent, LLM replicas


def test_access_log_lines_are_json_with_request_id_release_route_status_latency(http, serve_logs_dir, model_name):
    request_id = f"log-test-{time.time_ns()}"
    secret = "purple-elephant-prompt-7c1d"
    r = http.post(CHAT, headers={"X-Request-Id": request_id},
                  json={"model": model_name, "max_tokens": 4, "messages": [{"role": "user", "content": secret}]})
    assert r.status_code == 200 and r.headers["x-request-id"] == request_id

    def access_line() -> dict | None:
        line = None
        for path in serve_logs_dir.rglob("replica_*Ingress*.log"):
            for raw in path.read_text().splitlines():
                if request_id in raw and '"http_route"' in raw:
                    line = json.loads(raw)
        return line

    line = wait_until(access_line, 30, interval_s=1, until=lambda line: line is not None,
                      what="an access-log line for the request")
    assert line["request_id"] == request_id and line["levelname"] == "INFO" and line["asctime"]
    assert line["http_route"] == CHAT and line["status_code"] == 200 and line["latency_ms"] > 0
    assert line["release"] and line["http_method"] == "POST"
    # The LLM replica logs the call under the same request id: its log outlives the engine's start (vLLM's
    # logging setup closes every handler of the process; serve_app/llm/engine.py puts Serve's back).
    wait_until(lambda: [raw for path in serve_logs_dir.rglob(f"replica_*{DEPLOYMENT}_*.log")
                        for raw in path.read_text().splitlines() if request_id in raw and '"CALL ' in raw],
               30, interval_s=1, what="a line for the request in the LLM replica's log")
    # Prompt and answer text are not logged at the default level, by any component.
    for path in serve_logs_dir.rglob("*.log"):
        assert secret not in path.read_text(), path.name


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_chat_request_has_a_genai_model_call_span(http, trace_dir, model_name, stream):
    r = http.post("/v1/chat/completions", json={"model": model_name, "max_tokens": 3, "stream": stream,
                                                "stream_options": {"include_usage": True} if stream else None,
                                                "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    name = f"chat {model_name}"
    (call,) = [s for s in _spans(trace_dir, r.headers["x-trace-id"], {name}) if s["name"] == name]
    a = call["attributes"]
    assert call["kind"] == "SpanKind.CLIENT" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == model_name and a["gen_ai.request.max_tokens"] == 3
    assert a["gen_ai.usage.output_tokens"] == 3 and a["gen_ai.usage.input_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] == ["length"]
