"""Two replicas of one model on real Serve: which replica answers (the prefix router with sessions,
serve_app/llm/router.py), and the Responses API's state in the store, not in a replica.

A model served by an echo engine (tests/fakes/engine.py: its answer is the prompt its chat template rendered, no
model run) is added at run time with two replicas for this module and removed after (its router's tree actor
with it). Requests without a session and with nothing in common spread over both replicas; every call of a
session (an ``x-session-id`` header, a ``previous_response_id`` chain, a conversation) stays on one of them, and
the sessions split evenly between them. A chain's follow-up is answered by its session's replica every time;
that replica is SIGKILLed; the same follow-up, now answered by the other replica, must be rendered byte for byte
the same, and the session goes on there."""

import copy
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter

import pytest

from tests.chaos.faults import follow
from tests.polling import wait_until

pytestmark = pytest.mark.release

ECHO = "echo-tiny"
APP = f"serve_app-LLMServer-{ECHO}"


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


def _tree_actor_exists() -> bool:
    """Whether Ray still has the echo model's prefix-tree actor (asked by a driver of its own)."""
    code = ("import ray\nfrom serve_app.llm.router import TREE_ACTOR, tree_namespace\n"
            "ray.init(address='auto', logging_level='ERROR')\n"
            f"try:\n    ray.get_actor(TREE_ACTOR, namespace=tree_namespace({APP!r}, 'LLMServer-{ECHO}'))\n"
            "    print('present')\nexcept ValueError:\n    print('absent')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().endswith("present")


@pytest.fixture(scope="module")
def echo(http, admin) -> dict[str, int]:
    """The echo model's two replicas: replica id -> pid (from the health records: each probe reaches one)."""
    _add_echo(admin)
    try:
        pids: dict[str, int] = {}

        def look():
            c = http.get("/healthz").json()["components"].get(f"llm:{ECHO}") or {}
            if c.get("replica"):
                pids[c["replica"]] = c["pid"]
            return pids

        yield wait_until(look, 60, interval_s=0.2, until=lambda p: len(p) >= 2, what="both echo replicas seen")
        assert _tree_actor_exists()  # the router's state, kept by Ray for the deployment
    finally:
        r = admin.delete(f"/admin/models/{ECHO}")
        assert r.status_code == 202, r.text
        assert follow(admin, r.json()["release"])["status"] == "good"
        wait_until(lambda: admin.status()["applications"], 60,
                   until=lambda apps: APP not in apps, what="the echo model's application gone")
    assert not _tree_actor_exists()  # removed with its application, not left until serve.shutdown


def _chat(http, text: str, session: str | None = None, history: list | None = None) -> str:
    messages = [*(history or []), {"role": "user", "content": text}]
    r = http.post("/v1/chat/completions", json={"model": ECHO, "messages": messages, "max_tokens": 8},
                  headers={"x-session-id": session} if session else {})
    assert r.status_code == 200, r.text
    return r.headers["x-served-by"]


def _ask(http, body: dict):
    r = http.post("/v1/responses", json={"model": ECHO, **body})
    assert r.status_code == 200, r.text
    return r.json(), r.headers["x-served-by"]


def test_requests_without_a_session_or_a_shared_prefix_spread_over_both_replicas(http, echo):
    # Each prompt shares nothing with the others past its first characters (the prefix router then places it
    # on the replica that holds the least prompt text).
    served = Counter(_chat(http, " ".join(uuid.uuid4().hex for _ in range(6))) for _ in range(40))
    assert set(served) == set(echo), served
    assert all(16 <= n <= 24 for n in served.values()), served  # 50 ± 10 %


def test_every_call_of_a_session_stays_on_one_replica_and_the_sessions_split_evenly(http, echo):
    by_session: dict[str, set[str]] = {}
    for _ in range(4):  # x-session-id on chat completions, the history growing
        session, history = f"chat-{uuid.uuid4().hex}", []
        for turn in range(3):
            by_session.setdefault(session, set()).add(_chat(http, f"turn {turn}", session, history))
            history += [{"role": "user", "content": f"turn {turn}"}, {"role": "assistant", "content": "ok"}]
    for i in range(4):  # previous_response_id chains: a session from the second turn on
        previous, served = None, set()
        for turn in range(4):
            answer, by = _ask(http, {"input": f"chain {i} turn {turn}",
                                     **({"previous_response_id": previous} if previous else {})})
            previous = answer["id"]
            if turn:
                served.add(by)
        by_session[f"chain-{i}"] = served
    for i in range(4):  # conversations
        conversation = http.post("/v1/conversations", json={}).json()["id"]
        by_session[conversation] = {_ask(http, {"input": f"conversation {i} turn {t}",
                                                "conversation": conversation})[1] for t in range(3)}
    assert all(len(s) == 1 for s in by_session.values()), by_session
    # Each new session went to the replica with the fewest: the 12 split evenly (hashing them would not).
    assert sorted(Counter(next(iter(s)) for s in by_session.values()).values()) == [6, 6], by_session


def test_a_follow_up_rendered_after_its_replica_was_killed_is_byte_identical(http, echo):
    first, _ = _ask(http, {"input": "Remember the number 7.", "instructions": "Be brief."})
    turn = {"previous_response_id": first["id"], "input": "Which number was it?"}
    same, served = _ask(http, turn)
    assert all(_ask(http, turn)[1] == served for _ in range(3))  # the chain is one session: one replica
    os.kill(echo[served], signal.SIGKILL)
    other, by = _ask(http, turn)
    assert by != served
    rendered = other["output"][0]["content"][0]["text"]
    assert rendered == same["output"][0]["content"][0]["text"]
    assert "Remember the number 7." in rendered and "Which number was it?" in rendered
    # The first turn's instructions are its own: they reach the follow-up only inside the first answer (the
    # echo of the first prompt), not as the follow-up's system turn.
    assert rendered.count("Be brief.") == 1
    # The session goes on without its first replica.
    _, then = _ask(http, {"previous_response_id": other["id"], "input": "And now?"})
    assert then != served
