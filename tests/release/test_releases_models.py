"""Releases of one model while the other serves, on the session app's two models through the public admin API:
a release of the tiny model that fails its health watch is rolled back by itself while the default model
answers a load without a failure from the same engine; a failing canary of the tiny model and a good release
of the default model run at once, each judged and recorded with its scope, neither touching the other's
engine; a third model is added at run time, and removed with a stream open on it, which finishes, the next
request getting a 404; scoped releases that are invalid are refused naming the field, recording nothing.

Invariants: nothing one model's release does fails a request of, or restarts the engine of, another model.
Assertions are on counts, states and engine identities, never on durations.
"""

import copy
import json

import pytest

from benchmarks.load import Load
from tests.chaos.faults import background_stream, follow
from tests.names import DEPLOYMENT, LLM
from tests.polling import wait_until
from tests.release.test_releases import RELEASE_LOAD_PAUSE_S, TINY

pytestmark = pytest.mark.release

EXTRA = "tiny-extra"  # the tiny model under a third served name


def _models(config: dict) -> list[dict]:
    return config["applications"][0]["args"]["models"]


def _tiny(config: dict) -> dict:
    """The tiny model's entry of the config's models (served by default under TINY)."""
    return next(m for m in _models(config) if m.get("model", {}).get("served_name", TINY) == TINY
                and m["model"].get("source") == "tiny")


def _engine(http, name: str) -> tuple:
    c = http.get("/healthz").json()["components"][name]
    return c["pid"], c["started_at"]


def _chat(http, model: str):
    return http.post("/v1/chat/completions", json={"model": model, "max_tokens": 4,
                                                    "messages": [{"role": "user", "content": "hi"}]})


def test_a_failing_release_of_the_tiny_model_is_rolled_back_while_the_default_model_serves(
        app_url, http, admin, model_name):
    config = admin.current_config()
    # A fault-injection engine (tests/fakes/engine.py) that passes its first health checks, then fails them.
    _tiny(config)["engine"]["factory"] = "tests.fakes.engine:turns_unhealthy"
    default_engine = _engine(http, LLM)
    with Load(app_url, model_name, clients=2, pause_s=RELEASE_LOAD_PAUSE_S) as load:
        out = admin.deploy(config, "a tiny engine that turns unhealthy", model=TINY)
        assert out["scope"] == f"model:{TINY}" and out["changed"] == ["args.models"], out
        rel = follow(admin, out["release"])
        assert rel["status"] == "failed" and rel["rolled_back_to"], rel
        back = follow(admin, rel["rolled_back_to"])
        load.wait_for(3)  # requests after the rollback too
    assert f"LLMServer-{TINY}" in rel["outcome"] and rel["scope"] == f"model:{TINY}", rel
    assert back["status"] == "good" and back["kind"] == "rollback" and back["scope"] == f"model:{TINY}", back
    assert load.records and not load.failed(), load.failed()[:5]
    assert _engine(http, LLM) == default_engine  # the default model's engine was never restarted
    assert "factory" not in _tiny(admin.current_config())["engine"]
    assert _chat(http, TINY).status_code == 200


def test_a_failing_tiny_canary_and_a_good_default_release_at_once_each_keep_to_their_model(
        app_url, http, admin, model_name):
    engines = {LLM: _engine(http, LLM), TINY: _engine(http, f"llm:{TINY}")}
    tiny_config = admin.current_config()
    # A real fault: the canary's engine has a context too short for the load's prompts, so vLLM refuses them.
    _tiny(tiny_config)["engine"]["max_model_len"] = 32
    default_config = admin.current_config()
    llm = next(d for d in default_config["applications"][0]["deployments"] if d["name"] == DEPLOYMENT)
    # A release of the default model that changes its deployment's options: Serve applies it in place.
    llm["max_queued_requests"] = llm.get("max_queued_requests", 256) + 1
    canary = {"share": 0.5, "window_s": 60, "min_requests": 4}
    released = admin.get("/admin/releases").json()["data"][0]["n"]
    with Load(app_url, model_name, clients=1, pause_s=RELEASE_LOAD_PAUSE_S) as main, \
            Load(app_url, TINY, clients=2, pause_s=RELEASE_LOAD_PAUSE_S, streams=False) as tiny:
        c = admin.deploy(tiny_config, "tiny context too short", canary=canary, model=TINY)
        # A second release of the tiny model while its canary is out: refused, nothing recorded.
        again = admin.post("/admin/releases", json={"config": tiny_config, "model": TINY})
        assert again.status_code == 409 and again.json()["error"]["param"] == "model", again.text
        d = admin.deploy(default_config, "one more queued request", model=model_name)
        status = admin.status()
        assert status["deploying_by_scope"].get(f"model:{model_name}") in (d["release"], None)
        seen = status["models"][TINY]["canary"]
        assert seen is None or seen["release"] == c["release"], seen
        rel_c, rel_d = follow(admin, c["release"]), follow(admin, d["release"])
        tiny.wait_for(3)
        main.wait_for(3)
    assert rel_c["status"] == "failed" and rel_c["kind"] == "canary" and rel_c["scope"] == f"model:{TINY}", rel_c
    assert "canary rolled back" in rel_c["outcome"] and "error rate" in rel_c["outcome"], rel_c["outcome"]
    assert rel_d["status"] == "good" and rel_d["scope"] == f"model:{model_name}", rel_d
    assert [r["n"] for r in admin.get("/admin/releases").json()["data"] if r["n"] > released] == \
        sorted([c["release"], d["release"]], reverse=True)
    assert not main.failed(), main.failed()[:5]
    failed = tiny.failed()
    assert failed and {x["status"] for x in failed} == {400}, failed[:5]  # the canary's share, nothing else
    # Neither model's engine was restarted by the other's release (nor its own: options only, a canary).
    assert {LLM: _engine(http, LLM), TINY: _engine(http, f"llm:{TINY}")} == engines
    status = admin.status()
    assert status["canaries"] == {} and status["models"][TINY]["canary"] is None and status["status"] == "RUNNING"
    assert not [a for a in status["applications"] if a.endswith("-canary")]
    running = admin.current_config()
    assert _tiny(running)["engine"].get("max_model_len") != 32
    assert next(d for d in running["applications"][0]["deployments"] if d["name"] == DEPLOYMENT) == llm


def test_a_model_added_at_run_time_serves_and_a_stream_open_at_its_removal_finishes(app_url, http, admin, client):
    config = admin.current_config()
    tiny = _tiny(config)
    _models(config).append({"model": {**tiny["model"], "served_name": EXTRA}, "engine": tiny["engine"]})
    deployments = config["applications"][0]["deployments"]
    deployments.append({**copy.deepcopy(next(d for d in deployments if d["name"] == f"LLMServer-{TINY}")),
                        "name": f"LLMServer-{EXTRA}"})
    added = follow(admin, admin.deploy(config, "a third model", model=EXTRA)["release"])
    assert added["status"] == "good" and added["scope"] == f"model:{EXTRA}", added
    assert EXTRA in [m.id for m in client.models.list()]
    assert admin.status()["models"][EXTRA]["state"] == "RUNNING"
    t, lines = background_stream(app_url, {"model": EXTRA, "max_tokens": 400, "ignore_eos": True,
                                           "messages": [{"role": "user", "content": "Count."}]})
    r = admin.delete(f"/admin/models/{EXTRA}")
    assert r.status_code == 202, r.text
    removed = follow(admin, r.json()["release"])
    t.join(300)
    assert removed["status"] == "good" and removed["kind"] == "remove-model", removed
    # The stream finished whole: every token asked for, then [DONE], no error event.
    assert lines and lines[-1] == "[DONE]", lines[-3:]
    events = [json.loads(x) for x in lines[:-1]]
    assert not [e for e in events if "error" in e]
    assert [c.get("finish_reason") for e in events for c in e.get("choices", []) if c.get("finish_reason")] == \
        ["length"]
    gone = _chat(http, EXTRA)
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "model", gone.text
    assert EXTRA not in [m.id for m in client.models.list()]
    wait_until(lambda: admin.status()["applications"], 60, until=lambda apps: f"serve_app-LLMServer-{EXTRA}"
               not in apps, what="the removed model's application gone")


def test_scoped_releases_that_are_invalid_are_refused_naming_the_field(admin, model_name):
    before = admin.get("/admin/releases").json()["data"][0]["n"]
    config = admin.current_config()
    unknown = admin.post("/admin/releases", json={"config": config, "model": "no-such-model"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model", unknown.text
    other = copy.deepcopy(config)
    other["applications"][0]["args"].setdefault("engine", {})["seed"] = 11  # the default model's engine
    disagree = admin.post("/admin/releases", json={"config": other, "model": TINY})
    assert disagree.status_code == 400 and disagree.json()["error"]["param"] == "args.engine.seed", disagree.text
    both = admin.post("/admin/releases", json={"config": config, "model": TINY, "component": "agent"})
    assert both.status_code == 400, both.text
    # The first model is removable like any other, but RAG uses it while rag.model is unset.
    first = admin.delete(f"/admin/models/{model_name}")
    assert first.status_code == 400 and first.json()["error"]["param"] == "rag.model", first.text
    assert admin.delete("/admin/models/no-such-model").status_code == 404
    assert admin.get("/admin/releases").json()["data"][0]["n"] == before  # nothing recorded
