"""Where a CPU engine runs: the rest of the app kept off its cores, and several engines on one node each on
cores of its own.

vLLM's CPU build binds its model worker's OpenMP threads to the cores of one NUMA node minus the last one,
which it leaves to "other processes" (its own scheduler and front end). Bare `vllm serve` has little else
running, but behind a Ray Serve app the other processes are many: Ray's daemons, Serve's controller and
proxy, the ingress and the other deployments' replicas. Left free, the kernel runs them on the worker's
cores too, and every time one of them runs there the worker's step waits (benchmarks/results/
cpu-variants.json: the worker got 90 % of its core behind the app, 99 % bare; the engine was preempted
about 1 730 times a second instead of 360, and throughput dropped by about a tenth).

`serve-app run --isolate-engine-cpus` (opt-in: the control plane then has fewer cores, and replica starts
slow down on small machines) therefore starts its local Ray instance on the other cores only: every Ray
process, and so every replica, inherits that CPU mask. The engine's cores are passed to vLLM explicitly
(``VLLM_CPU_OMP_THREADS_BIND``) and the LLM replica lets the engine processes it starts reach them again
(``engine_cpus_reachable``), so the worker is bound exactly where vLLM's automatic binding would bind it.
The embedder and vector-store replicas, whose work is compute-bound and comes in bursts, run that work on
threads whose mask includes the engine's cores (``compute_executor``); the rest of those processes (Ray's
core worker, its gRPC and event-loop threads) stays on the other cores with the rest of Ray.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def _physical_cpus() -> list[tuple[int, int]] | None:
    """(NUMA node, CPU id) of the CPUs vLLM would bind an engine's worker to on this process's allowed CPUs: one
    logical CPU per physical core on SMT machines, every one elsewhere. None on a GPU build or an unknown
    architecture."""
    from vllm.platforms import CpuArchEnum, current_platform

    if not current_platform.is_cpu():
        return None
    import vllm.utils.cpu_resource_utils as cr

    arch = current_platform.get_cpu_architecture()
    if arch in (CpuArchEnum.X86, CpuArchEnum.S390X):
        per_core = max  # one logical CPU (the last) per physical core, as vLLM selects on SMT machines
    elif arch in (CpuArchEnum.ARM, CpuArchEnum.RISCV):
        per_core = None  # every logical CPU
    else:
        return None
    cores: dict[tuple[int, int], list[int]] = {}
    for cpu in cr.get_allowed_cpu_list():
        cores.setdefault((cpu.numa_node, cpu.physical_core), []).append(cpu.id)
    if per_core:
        return sorted((node, per_core(ids)) for (node, _), ids in cores.items())
    return sorted((node, i) for (node, _), ids in cores.items() for i in ids)


def engine_cpu_plan() -> tuple[list[int], list[int]] | None:
    """(the engine worker's CPUs, every other allowed CPU) as vLLM's automatic binding picks them for one
    worker, or None where there is nothing to split: a GPU build, or fewer than two usable cores."""
    cpus = _physical_cpus()
    if not cpus:
        return None
    selected = [i for node, i in cpus if node == cpus[0][0]]
    # vLLM reserves the last selected CPU(s) for the processes around its worker (one unless set otherwise).
    reserved = int(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU") or 1)
    if reserved < 1 or len(selected) <= reserved:
        return None
    engine = selected[:-reserved]
    others = sorted(set(os.sched_getaffinity(0)) - set(engine))
    return engine, others


def _every_thread(mask: Callable[[set[int]], set[int]]) -> None:
    """Set every thread's CPU mask to ``mask(its mask)``; threads and processes started later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), mask(os.sched_getaffinity(int(tid))))
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue


def pin_process(cpus: list[int]) -> None:
    """Restrict this process (and so every process it starts from now on) to ``cpus``."""
    _every_thread(lambda _: set(cpus))


def _bound_cpus() -> set[int]:
    """The engine's CPUs named by ``VLLM_CPU_OMP_THREADS_BIND``; none for "auto", "nobind" or a malformed
    value (vLLM reports that one itself)."""
    try:
        return parse_cpu_list(os.environ.get(BIND_ENV, ""))
    except ValueError:
        return set()


def widen_to_engine_cpus() -> None:
    """Let the calling thread (and the threads it starts from now on, e.g. an OpenMP pool) run on the engine's
    CPUs too."""
    extra = _bound_cpus()
    if extra and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, os.sched_getaffinity(0) | extra)


def compute_executor(name: str) -> ThreadPoolExecutor:
    """One thread for a replica's compute-bound work (embedding), allowed on the engine's CPUs too: kept to
    the cores left over it would lose half its throughput on a 2-core machine, while on the engine's cores it
    competes with the engine only while both are busy. Only this thread (and the threads torch starts from
    it) gets the wider mask: the replica's other threads, always awake a little, stay off the engine's cores."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=widen_to_engine_cpus)


def parse_cpu_list(value: str) -> set[int]:
    """CPUs of a ``VLLM_CPU_OMP_THREADS_BIND`` value ("0-3,6", several ranks separated by "|"); empty for
    "auto" / "nobind"."""
    cpus: set[int] = set()
    if value in ("", "auto", "nobind"):
        return cpus
    for rank in value.split("|"):
        for part in rank.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


@contextmanager
def engine_cpus_reachable() -> Iterator[None]:
    """While starting the engine: let the processes this thread starts run on the engine's CPUs as well.

    Child processes inherit the starting thread's CPU mask, and vLLM's worker can bind its threads only
    inside the mask it inherits; with the app kept off the engine's cores the worker could not reach them.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    wanted = before | _bound_cpus()
    if wanted != before:
        os.sched_setaffinity(0, wanted)
    try:
        yield
    finally:
        if wanted != before:
            os.sched_setaffinity(0, before)


# -- several engines on one node: each claims its own cores -------------------------------------------------
#
# vLLM's automatic binding puts every engine on the same cores (it knows of no other engine), so two engines
# on one machine share one core while the others idle. An engine with ``engine.cpu_cores`` set instead claims
# cores in a claim file of its node: the ones that fewest running engines of the same model hold, then fewest
# engines at all. Replicas of one model (which serve together, and a release's surge replica beside the one it
# replaces) so land on different cores first. A claim is the replica process's: it lapses when the process
# ends, however it ends.

CLAIMS_FILE = "serve_app-engine-cpus.json"


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False


def pick_cpus(candidates: list[int], count: int, claims: list[dict], model: str) -> list[int]:
    """The ``count`` candidates that fewest claims of ``model``, then fewest claims at all, hold (ties: the lower
    CPU id)."""
    def load(cpu: int) -> tuple[int, int, int]:
        mine = sum(1 for c in claims if cpu in c["cpus"] and c["model"] == model)
        return mine, sum(1 for c in claims if cpu in c["cpus"]), cpu

    return sorted(sorted(candidates, key=load)[:count])


def claim_cpus(count: int, model: str, directory: str | None = None) -> list[int] | None:
    """Claim ``count`` cores of this node for this process's engine (for the claim, see above). None where
    there is nothing to place: a GPU build, an unknown CPU architecture."""
    import fcntl
    import json
    import tempfile

    import psutil

    cpus = _physical_cpus()
    if not cpus:
        return None
    path = os.path.join(directory or tempfile.gettempdir(), CLAIMS_FILE)
    me = psutil.Process()
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        try:
            claims = [c for c in json.loads(f.read() or "[]") if _alive(c["pid"], c["started"]) and c["pid"] != me.pid]
        except (ValueError, KeyError, TypeError):
            claims = []  # an unreadable file holds no claim worth keeping
        chosen = pick_cpus([i for _, i in cpus], min(count, len(cpus)), claims, model)
        claims.append({"pid": me.pid, "started": me.create_time(), "model": model, "cpus": chosen})
        f.seek(0)
        f.truncate()
        f.write(json.dumps(claims))
    return chosen


def placement_env(cores: int | None, model: str) -> dict[str, str]:
    """The engine's ``VLLM_CPU_OMP_THREADS_BIND`` for ``engine.cpu_cores``: nothing when it is unset, when the
    binding is already given (``serve-app run --isolate-engine-cpus``, or by hand) or there is nothing to place."""
    if cores is None or os.environ.get(BIND_ENV, "auto") != "auto":
        return {}
    try:
        chosen = claim_cpus(cores, model)
    except OSError as exc:  # e.g. a claim file of another user: vLLM's own binding, as without cpu_cores
        import logging

        logging.getLogger("ray.serve").warning("no core claim for this engine (%s): vLLM binds it itself", exc)
        return {}
    return {BIND_ENV: ",".join(map(str, chosen))} if chosen else {}
