"""T2: the engine crashes under load (SIGKILL of the vLLM engine-core process of the only LLM replica).
Pass: every open stream ends with an in-band error event and then [DONE] (never cut silently); every
non-streaming request that fails gets a 503 with Retry-After and an OpenAI error body; no request gets a
500; the replica reports itself unhealthy, Serve replaces it and the app serves again without manual action."""

import signal
import time

import psutil
import pytest

from benchmarks.load import Load
from tests.chaos.faults import HEALTHZ_CONTRACT_S, HealthSampler, llm_replica_pids
from tests.names import LLM
from tests.polling import wait_healthy, wait_until

pytestmark = pytest.mark.chaos


def _engine_core(replica_pid: int) -> psutil.Process:
    children = psutil.Process(replica_pid).children(recursive=True)
    cores = [c for c in children if "EngineCore" in " ".join(c.cmdline()) or "EngineCore" in c.name()]
    assert cores, f"no engine-core process under the LLM replica {replica_pid}: {[c.name() for c in children]}"
    return cores[0]


def _replaced(http, old_pid, timeout_s=300):
    """Wait for /healthz to be 200 with an LLM replica other than ``old_pid``; returns (health, when the
    app first reported itself unhealthy)."""
    unhealthy_at = None

    def look():
        nonlocal unhealthy_at
        r = http.get("/healthz")
        if r.status_code != 200 and unhealthy_at is None:
            unhealthy_at = time.time()
        return r.status_code, r.json() if r.status_code == 200 else r.text[:1000]

    def replaced(answer) -> bool:
        status, health = answer
        return status == 200 and health["components"][LLM]["pid"] != old_pid

    _, health = wait_until(look, timeout_s, until=replaced,
                           what="the LLM replica with the dead engine replaced (/healthz 200, another pid)")
    return health, unhealthy_at


def test_t2_engine_crash_ends_streams_in_band_and_the_replica_is_replaced(app_url, http, model_name, reliability):
    before = wait_healthy(http)["components"][LLM]
    (replica, pid), = llm_replica_pids(http, 1).items()
    core = _engine_core(pid)
    with Load(app_url, model_name, clients=2, stream_tokens=200, plain_tokens=32,
              prompt="Count from one to two hundred, one number per line.") as load, HealthSampler(app_url) as health_log:
        load.wait_for(4, started_after=0)  # the engine has served before it goes
        load.wait_stream_open()  # a stream is in flight when the engine goes
        t_crash = time.time()
        core.send_signal(signal.SIGKILL)
        health, unhealthy_at = _replaced(http, pid)
        t_back = time.time()
        load.wait_for(4)  # requests started once the app was healthy again

    after = health["components"][LLM]
    summary = load.summary(fault_at=t_crash)
    reliability.record("T2", "engine-core process killed (SIGKILL), 1 replica, 2 clients", **summary,
                       reported_unhealthy_after_s=None if unhealthy_at is None else round(unhealthy_at - t_crash, 1),
                       replaced_and_healthy_after_s=round(t_back - t_crash, 1), **health_log.figures())
    # /healthz answered within its 1 s contract throughout the outage, and reported it (503).
    health_log.check()
    assert health_log.p99_s() <= HEALTHZ_CONTRACT_S, health_log.figures()
    assert health_log.figures()["healthz_503s"] > 0 and unhealthy_at is not None
    assert after["pid"] != pid and after["started_at"] > before["started_at"], "the replica was not replaced"
    failed = load.failed()
    assert failed, "the crash failed nothing: was the engine killed?"
    assert not [r for r in load.records if r["status"] == 500], "a request got a 500"
    for r in failed:
        if r["stream"] and r["status"] == 200:
            assert r["done"] and r["error_event"], r
        else:
            assert r["status"] == 503 and r["retry_after"], r
    assert any(r["stream"] and r["status"] == 200 for r in failed), "no stream was open at the crash"
    # Requests started once the app was healthy again succeed.
    late = [r for r in load.records if r["t"] > t_back]
    assert late and all(r["ok"] for r in late), [r for r in late if not r["ok"]][:5]
