"""T1: an LLM replica killed under load (SIGKILL of its process, the way a node's OOM killer or a crash
takes it). Pass: only requests in flight on that replica may fail; no request started later than the kill
plus one health-check period fails; the engine-core process of the killed replica does not outlive it; Serve
replaces the replica and the app is healthy again without manual action."""

import os
import signal
import time

import psutil

from benchmarks.load import Load
from tests.chaos.faults import gone, llm_replica_pids, scale, wait_healthy, wait_replicas
import pytest

pytestmark = pytest.mark.chaos

HEALTH_PERIOD_S = 10  # LLMServer's health_check_period_s in configs/dev-cpu.yaml


def test_t1_killing_an_llm_replica_fails_only_its_requests_in_flight(app_url, http, admin, model_name, reliability):
    # Two replicas so that one serves on while the other is killed (two small engines fit on 2 cores).
    scale(admin, "LLMServer", 2)
    try:
        replicas = llm_replica_pids(http, 2)
        victim, pid = sorted(replicas.items())[0]
        engine_pids = [c.pid for c in psutil.Process(pid).children(recursive=True)]
        with Load(app_url, model_name, clients=4, stream_tokens=48) as load:
            load.wait_for(8, started_after=0)  # both replicas busy, streams open
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            # Requests started after the kill plus one health period, on what serves then.
            load.wait_for(8, started_after=t_kill + HEALTH_PERIOD_S, timeout_s=240)
        recovered_at = wait_replicas(admin, "LLMServer", 2)
        engine_gone = gone(engine_pids, 30)

        summary = load.summary(fault_at=t_kill)
        reliability.record("T1", "LLM replica killed (SIGKILL), 2 replicas, 4 clients", **summary,
                           replaced_after_s=round(recovered_at - t_kill, 1),
                           engine_core_exited_with_replica=engine_gone)
        failed = load.failed()
        before = [r for r in load.records if r["t"] < t_kill]
        after = [r for r in load.records if r["t"] > t_kill + HEALTH_PERIOD_S]
        assert before and after and all(r["ok"] for r in after), [r for r in after if not r["ok"]][:5]
        # A failed request was in flight at the kill (or started within the health period) and, where the
        # answer names its replica (streams: headers came before the kill), on the killed one.
        assert all(r["t"] <= t_kill + HEALTH_PERIOD_S and r["end"] >= t_kill for r in failed), failed[:5]
        assert all(r["replica"] in (None, victim) for r in failed), failed[:5]
        # Every failed stream ended with an error event and [DONE], never cut silently.
        assert all(r["done"] and r["error_event"] for r in failed if r["stream"] and r["status"] == 200), failed[:5]
        assert {r["replica"] for r in after} - {None, victim}, "the surviving replica served nothing"
        assert engine_gone, f"the killed replica's engine-core processes {engine_pids} outlived it"
    finally:
        scale(admin, "LLMServer", 1)
        wait_healthy(http)
