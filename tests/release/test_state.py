"""The state store on the session app, which runs on PostgreSQL (tests/conftest.py): API keys made, used, rate
limited and revoked at run time with two ingress replicas; bad key requests; the release history read back
after the release controller is killed and the state directory removed, and a rollback from it; the store
stopped: admin writes refused with 503, chat answering.

Keys turn key checking on for every route, so the key test removes every key row when it ends (the suite's
other tests call anonymously), and waits until anonymous calls pass again."""

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.chaos.faults import follow, titled
from tests.conftest import ADMIN_KEY
from tests.polling import wait_until
from tests.postgres import remove_api_keys

pytestmark = pytest.mark.release
N = 30  # the limited key's requests per minute


def _cli(app_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SERVE_APP_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run([sys.executable, "-m", "serve_app.cli", *args, "--url", app_url], env=env,
                          capture_output=True, text=True, timeout=120)


def _running(admin, deployment: str) -> int:
    return admin.get("/admin/status").json()["deployments"][deployment]["running_replicas"]


@pytest.fixture
def two_ingress_replicas(admin):
    r = admin.post("/admin/scale", json={"deployment": "Ingress", "replicas": 2})
    assert r.status_code == 202, r.text
    assert follow(admin, r.json()["release"])["status"] == "good"
    wait_until(lambda: _running(admin, "Ingress") == 2, 120, what="a second ingress replica")
    try:
        yield
    finally:
        r = admin.post("/admin/rollback", json={"component": "ingress"})
        assert r.status_code == 202, r.text
        assert follow(admin, r.json()["release"])["status"] == "good"


@pytest.fixture
def keys_removed_after(postgres, http):
    yield
    remove_api_keys(postgres.url)
    wait_until(lambda: all(http.get("/v1/models").status_code == 200 for _ in range(6)), 30,
               what="anonymous calls allowed again")


def test_keys_at_run_time_hold_on_every_ingress_replica(two_ingress_replicas, keys_removed_after, app_url, http,
                                                        admin, model_name):
    # Bad key requests: 400 naming the field, nothing made.
    for body, param in (({"name": "x", "scopes": ["root"]}, "scopes"),
                        ({"name": "x", "requests_per_minute": -1}, "requests_per_minute"),
                        ({"name": "x", "models": ["no-such-model"]}, "models")):
        r = admin.post("/admin/keys", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"].startswith(param), r.text
    assert admin.get("/admin/keys").json()["data"] == []

    r = admin.post("/admin/keys", json={"name": "alice", "requests_per_minute": N, "tenant": "team-a"})
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert r.json()["tenant"] == "team-a" and admin.post("/admin/keys", json={"name": "alice"}).status_code == 409
    # Key checking is on, on both replicas, within the key book's poll.
    wait_until(lambda: all(http.get("/v1/models").status_code == 401 for _ in range(16)), 5,
               what="anonymous calls refused")
    assert openai.OpenAI(base_url=f"{app_url}/v1", api_key=key, max_retries=0).models.list().data

    # 4 minutes' worth of requests as fast as 4 clients send them, over both replicas.
    started = time.monotonic()
    with httpx.Client(base_url=app_url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c, \
            ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: c.get("/v1/models"), range(4 * N)))
    elapsed = time.monotonic() - started
    admitted = sum(a.status_code == 200 for a in answers)
    refused = [a for a in answers if a.status_code == 429]
    assert admitted + len(refused) == 4 * N
    print(f"rate limit {N}/min, 2 ingress replicas: {admitted} of {4 * N} admitted in {elapsed:.1f} s")
    lease = N * 2 / 60  # a replica's lease: 2 s of the rate (serve_app/ingress/shared_limits.py)
    assert admitted <= N + N * elapsed / 60 + 2 * lease, (admitted, elapsed)
    assert admitted >= N - 4 and refused  # the bucket less the call above and what replicas hold
    assert all(int(a.headers["retry-after"]) >= 1 and a.headers["x-ratelimit-limit-requests"] == str(N)
               for a in refused)

    # The CLI makes and lists keys through the same API.
    out = _cli(app_url, "keys", "create", "bob", "--models", model_name, "--rpm", "100")
    assert out.returncode == 0 and "shown once" in out.stderr, out.stderr
    bob = out.stderr.rsplit(": ", 1)[1].strip()
    out = _cli(app_url, "keys", "list")
    assert out.returncode == 0 and '"bob"' in out.stdout and '"alice"' in out.stdout

    # Revoked through the admin API: refused by both replicas within 2 s.
    with httpx.Client(base_url=app_url, timeout=30, headers={"Authorization": f"Bearer {bob}"}) as c:
        wait_until(lambda: all(c.get("/v1/models").status_code == 200 for _ in range(16)), 5,
                   what="bob's key working on both replicas")
        r = admin.delete("/admin/keys/bob")
        assert r.status_code == 200 and r.json()["status"] == "revoked"
        revoked_at = time.monotonic()

        def refused_since() -> float | None:  # when a batch began whose every call was refused
            began = time.monotonic()
            return began if all(c.get("/v1/models").status_code == 401 for _ in range(16)) else None

        refused_after = wait_until(refused_since, 10, interval_s=0.05, what="the revoked key refused") - revoked_at
        print(f"revoked key refused by every replica {refused_after:.2f} s after the revoke answered")
        assert refused_after <= 2.0, refused_after
        assert [c.get("/v1/models").status_code for _ in range(20)] == [401] * 20
    actions = [a["action"] for a in admin.get("/admin/audit").json()["data"]]
    assert {"create key alice", "create key bob", "revoke key bob"} <= set(actions)


def test_history_outlives_the_release_controller_and_its_state_directory(app_proc, admin, data_dir):
    before = [r["n"] for r in admin.releases()]
    last_good = next(r["n"] for r in admin.releases() if r["status"] == "good")
    controllers = titled(app_proc.pid, "ray::ReleaseController")
    assert len(controllers) == 1, controllers
    shutil.rmtree(data_dir / "releases", ignore_errors=True)
    controllers[0].send_signal(signal.SIGKILL)
    wait_until(lambda: admin.get("/admin/status").status_code == 200, 120, what="the release controller back")
    out = _cli(app_proc.url, "history")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert all(row.split()[0].isdigit() for row in rows), rows  # one line per release, whatever its outcome
    listed = {int(row.split()[0]) for row in rows}
    assert set(before) <= listed
    # A rollback to a release made before the kill: its config comes from the store.
    r = admin.post("/admin/rollback", json={"release": last_good})
    assert r.status_code == 202, r.text
    done = follow(admin, r.json()["release"])
    assert done["status"] == "good" and done["kind"] == "rollback"


def test_the_store_going_away_refuses_admin_writes_and_chat_goes_on(postgres, admin, client, model_name):
    postgres.pause()
    try:
        r = admin.post("/admin/keys", json={"name": "during-outage"})
        assert r.status_code == 503 and "state store" in r.json()["error"]["message"], r.text
        r = admin.post("/admin/scale", json={"deployment": "Agent", "replicas": 2})
        assert r.status_code == 503 and "state store" in r.json()["error"]["message"], r.text
        answer = client.chat.completions.create(model=model_name, max_tokens=4,
                                                messages=[{"role": "user", "content": "Say hi."}])
        assert answer.choices[0].message.content
    finally:
        postgres.resume()
    wait_until(lambda: admin.get("/admin/keys").status_code == 200, 60, what="the store answering again")
    assert "during-outage" not in admin.get("/admin/keys").text
    assert admin.get("/admin/status").json()["deployments"]["Agent"]["running_replicas"] == 1
