"""Keeping the app off a CPU engine's cores (serve_app/llm/cpus.py): the split follows vLLM's automatic
binding, a pinned process's children inherit the mask, and the engine started from a pinned thread can still
reach the cores it is bound to (libgomp refuses places outside the mask a process starts with)."""

import json
import os
import subprocess
import sys
import threading

import pytest

from serve_app.llm.cpus import BIND_ENV, engine_cpu_plan, engine_cpus_reachable, parse_cpu_list

pytestmark = [pytest.mark.unit, pytest.mark.vllm]  # vllm: runs under `make check-gpu-build` too

ALLOWED = sorted(os.sched_getaffinity(0))
def _cpu_build() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


# The split is the CPU build's (a GPU build binds no worker threads): engine_cpu_plan is None there, by design.
needs_two = pytest.mark.skipif(len(ALLOWED) < 2 or not _cpu_build(), reason="needs two CPUs and vLLM's CPU build")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", set()), ("nobind", set()), ("", set()), ("0", {0}), ("0-3,6", {0, 1, 2, 3, 6}), ("0-1|2-3", {0, 1, 2, 3})],
)
def test_parse_cpu_list(value, expected):
    assert parse_cpu_list(value) == expected


def test_parse_cpu_list_rejects_garbage():
    with pytest.raises(ValueError):
        parse_cpu_list("zero")


@needs_two
def test_plan_splits_the_allowed_cpus_like_vllms_automatic_binding():
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    plan = engine_cpu_plan()
    assert plan is not None
    engine, others = plan
    assert engine and others
    assert not set(engine) & set(others)
    assert set(engine) | set(others) == set(ALLOWED)
    # vLLM's own choice for one worker with automatic binding: the same worker cores.
    config = type("Config", (), {})()
    config.parallel_config = type("Parallel", (), {"local_world_size": 1, "data_parallel_rank_local": None,
                                                    "_api_process_count": 1})()
    config.kv_transfer_config = None
    assert OMPProcessManager(config).cpu_lists == [engine]


@needs_two
def test_plan_reserves_what_vllm_is_told_to(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", str(len(ALLOWED)))
    assert engine_cpu_plan() is None  # nothing left for the engine: no split


def _in_thread(fn):
    """Run ``fn`` in a thread of its own: CPU masks set there do not touch pytest's threads."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@needs_two
def test_engine_cpus_reachable_widens_the_starting_thread_and_restores_it(monkeypatch):
    engine, rest = ALLOWED[:1], ALLOWED[1:]
    monkeypatch.setenv(BIND_ENV, ",".join(map(str, engine)))

    def check():
        os.sched_setaffinity(0, rest)
        with engine_cpus_reachable():
            inside = os.sched_getaffinity(0)
            child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        return inside, child, os.sched_getaffinity(0)

    inside, child, after = _in_thread(check)
    assert inside == set(ALLOWED)
    assert child == str(sorted(ALLOWED))  # the engine's processes inherit the widened mask
    assert after == set(rest)


def test_engine_cpus_reachable_leaves_the_mask_alone_without_an_explicit_binding(monkeypatch):
    monkeypatch.setenv(BIND_ENV, "auto")
    before = os.sched_getaffinity(0)
    with engine_cpus_reachable():
        assert os.sched_getaffinity(0) == before


@needs_two
def test_pin_process_applies_to_every_thread_and_to_children():
    # In a process of its own: pinning is for the whole process.
    code = f"""
import os, subprocess, sys, threading
ev = threading.Event()
t = threading.Thread(target=ev.wait); t.start()
from serve_app.llm.cpus import pin_process
pin_process([{ALLOWED[-1]}])
masks = {{tuple(sorted(os.sched_getaffinity(int(tid)))) for tid in os.listdir("/proc/self/task")}}
child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                       capture_output=True, text=True, check=True).stdout.strip()
ev.set(); t.join()
print([list(m) for m in masks], child)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"[[{ALLOWED[-1]}]] [{ALLOWED[-1]}]"



@needs_two
def test_only_the_compute_thread_reaches_the_engines_cpus():
    code = f"""
import os, threading
from serve_app.llm.cpus import BIND_ENV, compute_executor, pin_process
pin_process([{ALLOWED[-1]}])
os.environ[BIND_ENV] = "{ALLOWED[0]}"
pool = compute_executor("t")
inner = pool.submit(lambda: sorted(os.sched_getaffinity(0))).result()
# A thread the compute thread starts (an OpenMP pool's) inherits its mask.
def start_one():
    out = []
    t = threading.Thread(target=lambda: out.append(sorted(os.sched_getaffinity(0))))
    t.start(); t.join()
    return out
child = pool.submit(start_one).result()
pool.shutdown(wait=True)
print(inner, sorted(os.sched_getaffinity(0)), child)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    both = sorted({ALLOWED[0], ALLOWED[-1]})
    assert out == f"{both} {[ALLOWED[-1]]} {[both]}"


def test_engines_spread_over_cores_replicas_of_one_model_first():
    from serve_app.llm.cpus import pick_cpus

    cpus = [0, 1, 2, 3]
    assert pick_cpus(cpus, 1, [], "a") == [0]
    claims = [{"model": "a", "cpus": [0]}]
    assert pick_cpus(cpus, 1, claims, "b") == [1]  # another model: a free core
    claims.append({"model": "b", "cpus": [1]})
    assert pick_cpus(cpus, 2, claims, "a") == [2, 3]
    full = claims + [{"model": "c", "cpus": [2]}, {"model": "c", "cpus": [3]}]
    # Every core taken: a second replica of "a" goes where "a" is not yet, the least shared core first.
    assert pick_cpus(cpus, 1, full, "a") == [1]


@needs_two
def test_claims_are_per_live_process_and_lapse_with_it(tmp_path):
    from serve_app.llm.cpus import CLAIMS_FILE, claim_cpus

    first = claim_cpus(1, "a", str(tmp_path))
    assert first is not None and len(first) == 1
    # A claim of a process that has ended is ignored; this process's own earlier claim is replaced.
    path = tmp_path / CLAIMS_FILE
    claims = json.loads(path.read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claims.append({"pid": int(dead.stdout), "started": 0.0, "model": "b", "cpus": [ALLOWED[1]]})
    path.write_text(json.dumps(claims))
    again = claim_cpus(1, "a", str(tmp_path))
    assert again == first
    assert [c["pid"] for c in json.loads(path.read_text())] == [os.getpid()]
