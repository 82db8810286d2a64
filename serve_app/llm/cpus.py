"""Keeping the rest of the app off the cores of a CPU engine.

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
The embedder and vector-store replicas, whose work is compute-bound and comes in bursts, widen their own
mask back to every core (``share_engine_cpus``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def engine_cpu_plan() -> tuple[list[int], list[int]] | None:
    """(the engine worker's CPUs, every other allowed CPU) as vLLM's automatic binding picks them for one
    worker, or None where there is nothing to split: a GPU build, or fewer than two usable cores."""
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
    allowed = cr.get_allowed_cpu_list()
    nodes = cr.get_visible_memory_node()
    if not nodes:
        return None
    cores: dict[int, list[int]] = {}
    for cpu in allowed:
        if cpu.numa_node == nodes[0]:
            cores.setdefault(cpu.physical_core, []).append(cpu.id)
    selected = sorted(per_core(ids) for ids in cores.values()) if per_core else sorted(
        i for ids in cores.values() for i in ids)
    # vLLM reserves the last selected CPU(s) for the processes around its worker (one unless set otherwise).
    reserved = int(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU") or 1)
    if reserved < 1 or len(selected) <= reserved:
        return None
    engine = selected[:-reserved]
    others = sorted({cpu.id for cpu in allowed} - set(engine))
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


def share_engine_cpus() -> None:
    """Let this whole process run on the engine's CPUs too. For replicas whose work comes in bursts and is
    compute-bound, like the embedder's: kept to the cores left over they would lose half their throughput
    on a 2-core machine, while on the engine's cores they compete with it only while both are busy."""
    extra = _bound_cpus()
    if extra and hasattr(os, "sched_setaffinity"):
        _every_thread(lambda mask: mask | extra)


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
