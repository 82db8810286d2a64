"""The engine CPU split of `serve-app run` on the CPU build (serve_app/llm/cpus.py), on the session app's real
processes: vLLM's worker bound to the engine's cores; the app's driver (and so Ray), the LLM replica and
the agent on the other cores; the vector store on every core."""

import os

import psutil
import pytest

from serve_app.llm.cpus import engine_cpu_plan


def test_the_engine_worker_keeps_its_cores_and_the_app_runs_on_the_others(http, app_proc):
    plan = engine_cpu_plan()
    if plan is None:
        pytest.skip("a single usable core: nothing to split")
    engine, others = set(plan[0]), set(plan[1])
    components = http.get("/healthz").json()["components"]

    assert set(os.sched_getaffinity(app_proc.pid)) == others  # the driver, whose mask Ray inherited
    llm = psutil.Process(components["llm"]["pid"])
    assert set(os.sched_getaffinity(llm.pid)) == others
    assert set(os.sched_getaffinity(components["agent"]["pid"])) == others
    assert set(os.sched_getaffinity(components["vector"]["pid"])) == engine | others

    engine_procs = llm.children(recursive=True)
    workers = [p for p in engine_procs if "VLLM::Worker" in " ".join(p.cmdline())]
    assert workers, [p.cmdline() for p in engine_procs]
    for worker in workers:
        # OpenMP binds the worker's main thread (and its compute threads) to the cores vLLM was given.
        assert set(os.sched_getaffinity(worker.pid)) == engine
