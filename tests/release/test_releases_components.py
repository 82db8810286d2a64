"""One Serve application per component, seen through the public admin API: /admin/status lists each
application with its version; a release that changes one model's engine rebuilds that model's application
and leaves every other replica (the first model's engine, the embedder, the vector store, the agent, the
ingress) running, with a stream in flight on the first model finishing. (A prompt release restarts no
engine: tests/release/test_releases.py.)
Assertions are on replica identities and states, never on durations."""

import copy
import json

import pytest

from tests.chaos.faults import background_stream
from tests.chaos.faults import follow as _follow
from tests.names import APP, DEPLOYMENT, LLM

pytestmark = pytest.mark.release

TINY = "tiny-random-llama"  # the session app's second model (configs/multi-model.yaml)
TINY_APP = f"serve_app-LLMServer-{TINY}"
APPS = {"serve_app", APP, TINY_APP, "serve_app-retrieval", "serve_app-agent"}


def _replicas(status):
    """Deployment -> the ids of its running replicas."""
    return {name: {r["id"] for r in d["replicas"] if r["state"] == "RUNNING"}
            for name, d in status["deployments"].items()}


def _current_config(admin):
    current = admin.get("/admin/status").json()["current_release"]
    return copy.deepcopy(admin.get(f"/admin/releases/{current}").json()["config"])


def test_status_shows_one_application_per_component_with_its_version(admin):
    status = admin.get("/admin/status").json()
    apps = status["applications"]
    assert set(apps) == APPS
    assert all(a["status"] == "RUNNING" and len(a["version"]) == 12 for a in apps.values()), apps
    assert apps["serve_app-retrieval"]["deployments"] == ["Embedder", "VectorStore"]
    assert status["deployments"][DEPLOYMENT]["application"] == APP
    assert len({a["version"] for a in apps.values()}) == len(apps)


def test_a_release_of_one_models_engine_leaves_every_other_replica_running(app_url, http, admin, model_name):
    config = _current_config(admin)
    config["applications"][0]["args"]["models"][0]["engine"]["seed"] = 7
    before_status = admin.get("/admin/status").json()
    before, health = _replicas(before_status), http.get("/healthz").json()["components"]
    # A stream on the first model, in flight while the release is submitted and rolled out.
    t, lines = background_stream(app_url, {"model": model_name, "max_tokens": 160, "messages": [
        {"role": "user", "content": "Count from one to one hundred in words."}]})
    r = admin.post("/admin/releases", json={"config": config, "note": "the second model's engine seed"})
    assert r.status_code == 202, r.text
    assert r.json()["changed"] == ["args.models"]
    rel = _follow(admin, r.json()["release"])
    t.join(300)
    assert rel["status"] == "good", rel
    # The stream finished whole: its last event is [DONE], no error event among them.
    assert lines and lines[-1] == "[DONE]", lines[-3:]
    events = [json.loads(x) for x in lines[:-1]]
    assert not [e for e in events if "error" in e]
    assert any(c.get("finish_reason") for e in events for c in e.get("choices", []))
    after_status = admin.get("/admin/status").json()
    after = _replicas(after_status)
    assert after[f"LLMServer-{TINY}"].isdisjoint(before[f"LLMServer-{TINY}"])  # the second engine restarted
    for name in (DEPLOYMENT, "Ingress", "Embedder", "VectorStore", "Agent"):
        assert after[name] == before[name], name  # the same replicas, never replaced
    components = http.get("/healthz").json()["components"]
    assert (components[LLM]["pid"], components[LLM]["started_at"]) == \
        (health[LLM]["pid"], health[LLM]["started_at"])
    versions = {n: a["version"] for n, a in after_status["applications"].items()}
    old = {n: a["version"] for n, a in before_status["applications"].items()}
    assert {n for n in versions if versions[n] != old[n]} == {TINY_APP}

