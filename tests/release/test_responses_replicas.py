"""The Responses API's state is in the store, not in a replica, shown on real Serve: a model served by an echo
engine (tests/fakes/engine.py: its answer is the prompt its chat template rendered, no model run) is added at
run time with two replicas. A first turn is answered by one of them; its follow-up rendered on that same
replica is recorded; that replica is SIGKILLed; the same follow-up, now answered by the other replica, must be
rendered byte for byte the same. The model is removed after."""

import copy
import os
import signal

import pytest

from tests.chaos.faults import follow
from tests.polling import wait_until

pytestmark = pytest.mark.release

ECHO = "echo-tiny"


def _add_echo(admin) -> None:
    config = admin.current_config()
    args = config["applications"][0]["args"]
    tiny = next(m for m in args["models"] if m["model"].get("source") == "tiny")
    args["models"].append({"model": {**tiny["model"], "served_name": ECHO},
                           "engine": {**copy.deepcopy(tiny["engine"]), "factory": "tests.fakes.engine:echo"}})
    # Two replicas that need no CPU of Ray's (the echo engine runs no model), quick to stop.
    config["applications"][0]["deployments"].append({
        "name": f"LLMServer-{ECHO}", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0},
        "health_check_period_s": 2, "graceful_shutdown_timeout_s": 5})
    added = follow(admin, admin.deploy(config, "an echo model, two replicas", model=ECHO)["release"])
    assert added["status"] == "good", added


def _ask(http, body: dict):
    r = http.post("/v1/responses", json={"model": ECHO, **body})
    assert r.status_code == 200, r.text
    return r.json(), r.headers["x-served-by"]


def test_a_follow_up_rendered_after_its_replica_was_killed_is_byte_identical(http, admin):
    _add_echo(admin)
    try:
        first, served = _ask(http, {"input": "Remember the number 7.", "instructions": "Be brief."})
        # The replicas' pids, from the health records (each ingress probe reaches one of them).
        pids: dict[str, int] = {}

        def look():
            c = http.get("/healthz").json()["components"].get(f"llm:{ECHO}") or {}
            if c.get("replica"):
                pids[c["replica"]] = c["pid"]
            return pids

        wait_until(look, 60, interval_s=0.2, until=lambda p: len(p) >= 2, what="both echo replicas seen")
        turn = {"previous_response_id": first["id"], "input": "Which number was it?"}
        same = wait_until(lambda: _ask(http, turn), 60, interval_s=0.05,
                          until=lambda answer: answer[1] == served, what="a follow-up on the first turn's replica")
        os.kill(pids[served], signal.SIGKILL)
        other, by = _ask(http, turn)
        assert by != served
        rendered = other["output"][0]["content"][0]["text"]
        assert rendered == same[0]["output"][0]["content"][0]["text"]
        assert "Remember the number 7." in rendered and "Which number was it?" in rendered
        # The first turn's instructions are its own: they reach the follow-up only inside the first answer (the
        # echo of the first prompt), not as the follow-up's system turn.
        assert rendered.count("Be brief.") == 1
    finally:
        r = admin.delete(f"/admin/models/{ECHO}")
        assert r.status_code == 202, r.text
        assert follow(admin, r.json()["release"])["status"] == "good"
        wait_until(lambda: admin.status()["applications"], 60,
                   until=lambda apps: f"serve_app-LLMServer-{ECHO}" not in apps, what="the echo model's application gone")

