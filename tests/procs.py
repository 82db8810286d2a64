"""Stopping a server started by a test: signal it, wait, then make sure nothing of its process tree is
left (ended by process id, never by name)."""

import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import psutil


def stop_tree(proc: subprocess.Popen, sig=signal.SIGTERM, timeout_s: float = 120, whole_tree: bool = False):
    """Returns (exit code or None if it had to be killed, processes of its tree that outlived it).

    ``whole_tree`` (a `ray start --block` node): signal every process under the top one at once, as `ray stop`
    does (by process id here), then end the top one, which only monitors them. Signalled itself, it stops its
    processes one after the other with a grace period each: about 30 s for a head here, where each process
    stops in well under a second.
    """
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if whole_tree:
        for p in family:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=timeout_s)
        proc.kill()
    else:
        proc.send_signal(sig)
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        rc = None
    # What the top process started gets a moment to follow it; a zombie has exited (its parent reaps it).
    _, alive = psutil.wait_procs(family, timeout=2)
    left = [p for p in alive if _running(p)]
    for p in left + ([psutil.Process(proc.pid)] if rc is None else []):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return rc, left


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_trees(procs: list[subprocess.Popen], sig=signal.SIGTERM, timeout_s: float = 120,
               whole_tree: bool = False) -> list[psutil.Process]:
    """``stop_tree`` of several servers at once (e.g. the nodes of a cluster); the processes that outlived them."""
    procs = [p for p in procs if p is not None]
    if not procs:
        return []
    with ThreadPoolExecutor(len(procs)) as pool:
        return [p for _, left in pool.map(lambda proc: stop_tree(proc, sig, timeout_s, whole_tree), procs) for p in left]
