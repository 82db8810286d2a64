"""Scale to zero on the session app's tiny model, through releases of the public admin API: at
``min_replicas: 0`` it goes to zero replicas after its idle period and stays there while /healthz,
/v1/models and /admin/status are polled (none of them calls it; /healthz answers at once, 200, saying
``scaled_to_zero``); three concurrent chats during one cold start are all answered by one replica. Meanwhile
the default model answers a load without a failure from the same engine.

A request past the cold-start deadline getting 503 with Retry-After while the replica still comes up for the
next one costs two more engine starts and two ingress restarts here (the deadline is an ingress setting), so
it runs in its own target, `make test-cold-start-deadline` (its logic is unit-tested on every run:
tests/unit/test_scale_to_zero.py).

Assertions are on states, counts and engine identities; how long a cold start took is the app's own metric
(and benchmarks/cold_start.py), reported, not asserted.
"""

import copy
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.load import Load
from serve_app.observability.metrics import exported_name
from tests.chaos.faults import HEALTHZ_CONTRACT_S, HEALTHZ_MARGIN_S, follow
from tests.names import LLM, TINY_DEPLOYMENT, TINY_LLM
from tests.polling import wait_until
from tests.release.test_releases import RELEASE_LOAD_PAUSE_S, TINY

pytestmark = pytest.mark.release

# Idle for a second and a half, then down to zero (Serve averages the load over look_back_period_s first).
TO_ZERO = {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 8, "upscale_delay_s": 0,
           "downscale_delay_s": 1, "downscale_to_zero_delay_s": 1, "look_back_period_s": 1.5}


def _with(config: dict, autoscaling: dict | None = None, cold_start_timeout_s: float | None = None) -> dict:
    out = copy.deepcopy(config)
    app = out["applications"][0]
    if autoscaling is not None:
        tiny = next(d for d in app["deployments"] if d["name"] == TINY_DEPLOYMENT)
        tiny["autoscaling_config"] = autoscaling
    if cold_start_timeout_s is not None:
        app["args"].setdefault("ingress", {})["cold_start_timeout_s"] = cold_start_timeout_s
    return out


def _running(admin) -> int:
    return admin.get("/admin/status").json()["deployments"][TINY_DEPLOYMENT]["running_replicas"]


def _at_zero(http, admin) -> None:
    """Wait until Serve holds the tiny model at zero replicas and /healthz says so (its view is at most a health
    period old)."""
    wait_until(lambda: _running(admin), 120, until=lambda n: n == 0, what="the tiny model at zero replicas")
    wait_until(lambda: http.get("/healthz").json()["components"][TINY_LLM]["status"], 10,
               until=lambda status: status == "scaled_to_zero", what="/healthz saying scaled_to_zero")


def _stays_at_zero(http, admin, seconds: float) -> None:
    """Poll what must not wake the model, every 0.5 s for ``seconds``: it stays at zero replicas."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        began = time.monotonic()
        r = http.get("/healthz")
        took = time.monotonic() - began
        assert r.status_code == 200 and took < HEALTHZ_CONTRACT_S + HEALTHZ_MARGIN_S, (r.status_code, took, r.text)
        assert r.json()["components"][TINY_LLM]["status"] == "scaled_to_zero", r.json()["components"][TINY_LLM]
        assert TINY in [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert _running(admin) == 0
        time.sleep(0.5)


def _chat(http, timeout: float = 300):
    return http.post("/v1/chat/completions", timeout=timeout, json={
        "model": TINY, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})


def _restore(admin, original: dict) -> None:
    follow(admin, admin.deploy(original, "the session config again")["release"])
    wait_until(lambda: _running(admin), 300, until=lambda n: n == 1, what="the tiny model back at one replica")


def test_the_tiny_model_scales_to_zero_and_only_a_client_request_wakes_it(app_url, http, admin, model_name):
    original = admin.current_config()
    engine = http.get("/healthz").json()["components"][LLM]
    try:
        with Load(app_url, model_name, clients=2, pause_s=RELEASE_LOAD_PAUSE_S) as load:
            # A release of the tiny model alone: deployment options, so nothing restarts.
            out = admin.deploy(_with(original, TO_ZERO), "tiny to zero", model=TINY)
            assert follow(admin, out["release"])["status"] == "good"
            _at_zero(http, admin)
            _stays_at_zero(http, admin, 4)
            # Three chats during one cold start share it: all answered, by one replica.
            with ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(lambda _: _chat(http), range(3)))
            assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
            assert _running(admin) == 1
            # Back to one replica at least while the model is up: no engine start to wait for.
            out = admin.deploy(original, "tiny back to one replica", model=TINY)
            assert follow(admin, out["release"])["status"] == "good"
            load.wait_for(3)
        assert load.records and not load.failed(), load.failed()[:5]
        after = http.get("/healthz").json()["components"][LLM]
        assert (after["pid"], after["started_at"]) == (engine["pid"], engine["started_at"])
        # The app's own count of cold starts (exported through Ray's metrics agent, scraped at /metrics).
        counted = re.compile(rf'^{exported_name("serve_app_cold_starts")}_total{{[^}}]*model="{TINY}"', re.M)
        wait_until(lambda: http.get("/metrics").text, 60, until=counted.search, what="the cold starts in /metrics")
    except BaseException:
        _restore(admin, original)
        raise
    assert _running(admin) == 1


@pytest.mark.skipif(os.environ.get("SERVE_APP_TEST_COLD_DEADLINE") != "1",
                    reason="two more engine starts: make test-cold-start-deadline")
def test_past_the_cold_start_deadline_a_request_gets_503_and_the_replica_still_comes_up(app_url, http, admin,
                                                                                          model_name):
    original = admin.current_config()
    try:
        with Load(app_url, model_name, clients=2, pause_s=RELEASE_LOAD_PAUSE_S) as load:
            # A cold-start deadline far below the tiny engine's start, and the tiny model at zero.
            out = admin.deploy(_with(original, TO_ZERO, cold_start_timeout_s=0.5), "short deadline, tiny to zero")
            assert follow(admin, out["release"])["status"] == "good"
            _at_zero(http, admin)
            refused = _chat(http)
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1, refused.text
            assert refused.json()["error"]["param"] == "model" and "starting" in refused.json()["error"]["message"]
            # The start goes on without another request.
            wait_until(lambda: _running(admin), 300, until=lambda n: n == 1, what="the replica the refused request woke")
            assert _chat(http).status_code == 200
            load.wait_for(3)
        assert load.records and not load.failed(), load.failed()[:5]
    finally:
        _restore(admin, original)
