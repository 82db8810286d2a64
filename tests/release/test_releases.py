"""Releases of the whole app: the admin API's key check and audit, refusal of an invalid release, scaling that
restarts nothing, a good release under load with streams open, and a release whose LLM cannot start rolled
back automatically; a canary promoted. (A release that fails its health watch and a canary that fails, both of
one model while the other serves: tests/release/test_releases_models.py.)

Invariants: an invalid release touches nothing; a good release fails no request and cuts no stream; a bad
release is rolled back by the controller itself to the previous configuration, which serves again; every
outcome is in the history; a release replaces only the deployments whose part of the settings it changes.
Assertions are on counts and states, never on durations. This module restarts deployments, so it runs after
the app tier (and before chaos). Scale-down with streams open (T10) shares the chaos tier's two LLM replicas:
tests/chaos/test_t1_t10_llm_replicas.py.
"""

import copy
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

# The same bounded load the release benchmark uses: non-streaming chat and streams, every request recorded.
from benchmarks.load import Load
from tests.chaos.faults import follow as _follow
from tests.names import DEPLOYMENT, LLM
from tests.polling import wait_until

pytestmark = pytest.mark.release

ROOT = Path(__file__).resolve().parents[2]


# The release tests' traffic: present throughout (every request recorded), light enough that the engines a
# release starts are not slowed down by it (a full-speed load made each start 2-3x slower on 2 cores).
RELEASE_LOAD_PAUSE_S = 0.3
TINY = "tiny-random-llama"  # the session app's second model (configs/multi-model.yaml)


def _config():
    return yaml.safe_load((ROOT / "configs/dev-cpu.yaml").read_text())


def test_admin_api_needs_the_key_and_audits_refusals(app_url, admin):
    assert httpx.get(f"{app_url}/admin/status").status_code == 401
    wrong = httpx.get(f"{app_url}/admin/releases", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    status = admin.get("/admin/status")
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["current_release"] == 1 and body["status"] == "RUNNING"
    assert all(d["status"] == "HEALTHY" for d in body["deployments"].values())
    audit = admin.get("/admin/audit").json()["data"]
    refused = [a for a in audit if not a["allowed"]]
    assert {a["action"] for a in refused} >= {"GET /admin/status", "GET /admin/releases"}
    assert "nope" not in json.dumps(audit)
    # The key is checked before anything of the request is read: a malformed body or path without the key
    # is a 401 too (not a 400 telling an unknown caller what is wrong with it), and it reaches no route.
    for method, path, kwargs in [("POST", "/admin/scale", {"json": {"deployment": 5}}),
                                 ("POST", "/admin/releases", {"content": b"{not json"}),
                                 ("POST", "/admin/rollback", {"json": {"release": "x"}}),
                                 ("GET", "/admin/releases/abc", {}), ("GET", "/admin/nowhere", {})]:
        r = httpx.request(method, f"{app_url}{path}", **kwargs)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.status_code, r.text)
    refused = [a for a in admin.get("/admin/audit").json()["data"] if not a["allowed"]]
    assert {a["action"] for a in refused} >= {"POST /admin/scale", "POST /admin/releases", "GET /admin/releases/abc"}


def test_invalid_release_is_refused_and_touches_nothing(admin):
    before = admin.get("/admin/releases").json()["data"]
    config = _config()
    config["applications"][0]["args"]["engine"]["max_model_len"] = 0
    r = admin.post("/admin/releases", json={"config": config})
    assert r.status_code == 400, r.text
    assert "engine.max_model_len" in r.json()["error"]["message"]
    r = admin.post("/admin/releases", content=b"applications: [", headers={"content-type": "application/yaml"})
    assert r.status_code == 400
    r = admin.post("/admin/scale", json={"deployment": "VectorStore", "replicas": 3})
    assert r.status_code == 400 and "single-writer" in r.json()["error"]["message"]
    r = admin.post("/admin/scale", json={"deployment": "Nope", "replicas": 1})
    assert r.status_code == 404
    assert admin.get("/admin/releases").json()["data"] == before
    status = admin.get("/admin/status").json()
    assert status["deploying"] is None and status["status"] == "RUNNING"


def test_scaling_is_a_release_that_restarts_nothing(http, admin):
    llm_started = http.get("/healthz").json()["components"][LLM]["started_at"]
    r = admin.post("/admin/scale", json={"deployment": "Agent", "replicas": 2})
    assert r.status_code == 202, r.text
    rel = _follow(admin, r.json()["release"])
    assert rel["status"] == "good" and rel["kind"] == "scale" and rel["changed"] == ["deployments.Agent"]
    assert admin.get("/admin/status").json()["deployments"]["Agent"]["running_replicas"] == 2
    r = admin.post("/admin/scale", json={"deployment": "Agent", "factor": 0.5})
    assert _follow(admin, r.json()["release"])["status"] == "good"
    assert admin.get("/admin/status").json()["deployments"]["Agent"]["running_replicas"] == 1
    health = http.get("/healthz").json()
    assert health["components"][LLM]["started_at"] == llm_started
    assert health["release"] == str(r.json()["release"])


def test_good_release_under_load_fails_nothing(app_url, http, admin, model_name):
    current = admin.get("/admin/status").json()["current_release"]
    config = copy.deepcopy(admin.get(f"/admin/releases/{current}").json()["config"])
    config["applications"][0]["args"].setdefault("rag", {})["default_top_k"] = 3
    before = http.get("/healthz").json()["components"]
    with Load(app_url, model_name, clients=2, pause_s=RELEASE_LOAD_PAUSE_S) as load:
        load.wait_for(3, started_after=0)  # traffic flows (streams among it) before the release
        r = admin.post("/admin/releases", json={"config": config, "note": "fewer sources"})
        assert r.status_code == 202, r.text
        n = r.json()["release"]
        assert r.json()["changed"] == ["args.rag"]
        rel = _follow(admin, n)
        load.wait_for(3)  # and after it
    assert rel["status"] == "good", rel
    failed = [x for x in load.records if not x["ok"]]
    assert load.records and not failed, failed[:5]
    assert any(x["stream"] for x in load.records)
    status = admin.get("/admin/status").json()
    assert status["current_release"] == n and all(d["status"] == "HEALTHY" for d in status["deployments"].values())
    assert http.get("/healthz").json()["release"] == str(n)
    assert admin.get(f"/admin/releases/{n}").json()["config"]["applications"][0]["args"]["rag"]["default_top_k"] == 3
    # Per-deployment versions: the RAG settings are the Ingress's alone; the model was not reloaded, no other
    # deployment was replaced.
    after = http.get("/healthz").json()["components"]
    assert after[LLM]["started_at"] == before[LLM]["started_at"] and after[LLM]["pid"] == before[LLM]["pid"]
    assert after["vector"]["pid"] == before["vector"]["pid"] and after["agent"]["pid"] == before["agent"]["pid"]


def test_a_prompt_release_replaces_the_agent_and_leaves_the_model_loaded(http, admin):
    current = admin.get("/admin/status").json()["current_release"]
    config = copy.deepcopy(admin.get(f"/admin/releases/{current}").json()["config"])
    args = config["applications"][0]["args"]
    args["prompts"] = {**(args.get("prompts") or {}), "version": "release-test-prompts"}
    before = http.get("/healthz").json()["components"]
    engines = _engine_replicas(admin)
    r = admin.post("/admin/releases", json={"config": config, "note": "new prompt set"})
    assert r.status_code == 202, r.text
    assert r.json()["changed"] == ["args.prompts"]
    assert _follow(admin, r.json()["release"])["status"] == "good"
    after = http.get("/healthz").json()["components"]
    assert after["agent"]["prompts_version"] == "release-test-prompts" and after["agent"]["pid"] != before["agent"]["pid"]
    assert after[LLM]["started_at"] == before[LLM]["started_at"] and after["vector"]["pid"] == before["vector"]["pid"]
    assert _engine_replicas(admin) == engines  # no engine restarted, the second model's neither
    rag = http.post("/v1/rag", json={"question": "What is in the documents?", "max_tokens": 4})
    assert rag.status_code == 200 and rag.json()["prompts_version"] == "release-test-prompts", rag.text


def _engine_replicas(admin):
    deployments = admin.get("/admin/status").json()["deployments"]
    return {name: sorted(r["id"] for r in deployments[name]["replicas"]) for name in (DEPLOYMENT, f"LLMServer-{TINY}")}


def _agent_replicas(admin):
    return admin.get("/admin/status").json()["deployments"]["Agent"]["running_replicas"]


def test_autoscaling_adds_a_replica_under_a_spike_and_removes_it_after(app_url, admin):
    # Low targets through a release that only changes deployment options (nothing restarts).
    current = admin.get("/admin/status").json()["current_release"]
    config = copy.deepcopy(admin.get(f"/admin/releases/{current}").json()["config"])
    agent = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Agent")
    agent["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                   "upscale_delay_s": 1, "downscale_delay_s": 5, "look_back_period_s": 5}
    r = admin.post("/admin/releases", json={"config": config, "note": "agent autoscaling with low targets"})
    assert r.status_code == 202, r.text
    assert _follow(admin, r.json()["release"])["status"] == "good"
    assert _agent_replicas(admin) == 1

    stop = threading.Event()

    def spike():
        with httpx.Client(base_url=app_url, timeout=300) as c:
            for _ in range(20):
                if stop.is_set():
                    return
                c.post("/v1/agent", json={"task": "What is 2 + 2? Use the calculator.", "max_steps": 4})

    threads = [threading.Thread(target=spike, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: _agent_replicas(admin), 120, interval_s=1, until=lambda n: n >= 2,
                   what="a replica added under the spike (Agent's running replicas)")
    finally:
        stop.set()
        for t in threads:
            t.join(300)
    wait_until(lambda: _agent_replicas(admin), 180, interval_s=1, until=lambda n: n == 1,
               what="the added replica removed after the load stopped (Agent's running replicas)")


def _canary_release(admin, engine_change, canary, note):
    current = admin.get("/admin/status").json()["current_release"]
    config = copy.deepcopy(admin.get(f"/admin/releases/{current}").json()["config"])
    config["applications"][0]["args"]["engine"].update(engine_change)
    r = admin.post("/admin/releases", json={"config": config, "note": note, "canary": canary})
    assert r.status_code == 202, r.text
    assert r.json()["changed"] == ["args.engine"] and r.json()["canary"]["share"] == canary["share"]
    return current, r.json()["release"]


def _wait_for_window(admin, n, timeout_s=300):
    """The canary's status once it has left its start (None: it is already over)."""
    return wait_until(lambda: admin.get("/admin/status").json()["canary"], timeout_s,
                      until=lambda canary: canary is None or canary["phase"] != "starting",
                      what=f"canary {n} out of its start")


def test_good_canary_is_promoted_under_load_without_failures(app_url, http, admin, model_name):
    llm_started = http.get("/healthz").json()["components"][LLM]["started_at"]
    tiny_before = http.get("/healthz").json()["components"][f"llm:{TINY}"]
    # Thresholds for a shared 2-core machine where two engines compete; the decision logic is unit-tested.
    canary = {"share": 0.5, "window_s": 8, "min_requests": 5, "max_ttft_p99_ratio": 4.0, "ttft_slack_ms": 2000}
    with Load(app_url, model_name, clients=2, pause_s=RELEASE_LOAD_PAUSE_S) as load:
        _, n = _canary_release(admin, {"max_num_seqs": 32}, canary, "smaller batch")
        seen = _wait_for_window(admin, n)
        assert seen is not None and seen["phase"] in ("window", "promoting"), seen
        if seen["phase"] == "window":
            load.wait_for(4)  # traffic inside the window
            window = admin.get("/admin/status").json()["canary"]
            assert window is None or window["release"] == n
        rel = _follow(admin, n)
        load.wait_for(3)  # and after the promotion
    assert rel["status"] == "good" and rel["kind"] == "canary", rel
    assert rel["outcome"].startswith("canary passed"), rel["outcome"]
    failed = [x for x in load.records if not x["ok"]]
    assert load.records and not failed, failed[:5]
    status = admin.get("/admin/status").json()
    assert status["current_release"] == n and status["last_good_release"] == n and status["canary"] is None
    health = http.get("/healthz").json()
    assert health["release"] == str(n) and health["components"][LLM]["started_at"] != llm_started
    # A release of one model replaces that model's deployment only: the other model's engine kept running.
    assert health["components"][f"llm:{TINY}"]["pid"] == tiny_before["pid"]
    assert health["components"][f"llm:{TINY}"]["started_at"] == tiny_before["started_at"]
    assert admin.get(f"/admin/releases/{n}").json()["config"]["applications"][0]["args"]["engine"]["max_num_seqs"] == 32


def test_release_whose_llm_cannot_start_is_rolled_back(app_url, http, admin, model_name, reliability):
    good = admin.get("/admin/status").json()["current_release"]
    config = copy.deepcopy(admin.get(f"/admin/releases/{good}").json()["config"])
    app = config["applications"][0]
    app["args"]["model"] = {**app["args"]["model"], "source": "/nonexistent/model", "served_name": model_name}
    with Load(app_url, model_name, clients=2, pause_s=RELEASE_LOAD_PAUSE_S) as load:
        r = admin.post("/admin/releases", json={"config": config, "note": "a model that does not exist"})
        assert r.status_code == 202, r.text
        n = r.json()["release"]
        rel = _follow(admin, n)
        assert rel["status"] == "failed" and DEPLOYMENT in rel["outcome"] and rel["rolled_back_to"], rel
        back = _follow(admin, rel["rolled_back_to"])
        rollback_done = time.time()
        load.wait_for(4)  # requests sent after the rollback
    reliability.record("T7", "release whose model does not exist, under load (2 clients)",
                       **load.summary(fault_at=rel["created_at"]),
                       failure_detected_s=round(rel["finished_at"] - rel["created_at"], 1),
                       deploy_to_previous_serving_s=round(back["finished_at"] - rel["created_at"], 1))
    assert back["status"] == "good" and back["kind"] == "rollback", back["outcome"]
    # After the rollback, everything succeeds again; failures (if any) lie inside the deploy→rollback window.
    after = [x for x in load.records if x["t"] > rollback_done]
    assert after and all(x["ok"] for x in after)
    failed = [x for x in load.records if not x["ok"]]
    assert all(x["t"] < rollback_done for x in failed)
    status = admin.get("/admin/status").json()
    assert status["current_release"] == rel["rolled_back_to"]
    assert admin.get(f"/admin/releases/{rel['rolled_back_to']}").json()["config"]["applications"][0]["args"]["model"] \
        == admin.get(f"/admin/releases/{good}").json()["config"]["applications"][0]["args"]["model"]
    chat = http.post("/v1/chat/completions", json={"model": model_name, "max_tokens": 4,
                                                     "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200
