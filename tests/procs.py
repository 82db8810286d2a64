"""Stopping a server started by a test: signal it, wait, then make sure nothing of its process tree is
left (ended by process id, never by name)."""

import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil


def stop_tree(proc: subprocess.Popen, sig=signal.SIGTERM, timeout_s: float = 120):
    """Returns (exit code or None if it had to be killed, processes of its tree that outlived it)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        rc = None
    time.sleep(2)
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in left + ([psutil.Process(proc.pid)] if rc is None else []):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return rc, left


def stop_trees(procs: list[subprocess.Popen], sig=signal.SIGTERM, timeout_s: float = 120) -> list[psutil.Process]:
    """``stop_tree`` of several servers at once (e.g. the nodes of a cluster); the processes that outlived them."""
    procs = [p for p in procs if p is not None]
    if not procs:
        return []
    with ThreadPoolExecutor(len(procs)) as pool:
        return [p for _, left in pool.map(lambda proc: stop_tree(proc, sig, timeout_s), procs) for p in left]
