"""The state store's operations on both engines it runs on (the congruence suite): SQLite, the default, and a
real PostgreSQL (tests/postgres.py). Every test runs on each, on a fresh database: release history and audit,
API keys (create, change, revoke, the key file as a seed), and the shared rate-limit buckets with two
replicas' limiters leasing from them. The clock of the limiter tests is a fake: the bound is on what is
admitted, not on time."""

import asyncio
import secrets

import pytest
from sqlalchemy import text

from serve_app.ingress.keybook import KeyBook
from serve_app.ingress.limits import digest
from serve_app.ingress.shared_limits import LEASE_S, SharedRateLimiter
from serve_app.protocol.keys import KeyEntry
from serve_app.release.history import History
from serve_app.state import buckets, store
from serve_app.state.keys import KeyExists, KeyNotFound, KeyStore

pytestmark = pytest.mark.unit


def _entry(name: str, **kw) -> tuple[str, KeyEntry]:
    key = f"sk-{secrets.token_urlsafe(16)}"
    return key, KeyEntry(name=name, sha256=digest(key), **kw)


def test_schema_is_at_head_and_migrating_again_changes_nothing(engine):
    assert store.at_head(engine) and store.revision(engine) == store.head()
    History(engine).add(actor="a", kind="initial", note=None, config={"x": 1}, changed=[], status="good")
    store.migrate(engine)
    assert len(History(engine).list()) == 1


def test_history_and_audit(engine, monkeypatch):
    h = History(engine)
    n1 = h.add(actor="a", kind="initial", note=None, config={"applications": [1]}, changed=["everything"],
               status="deploying")
    h.finish(n1, "good", "healthy")
    n2 = h.add(actor="b", kind="deploy", note="n", config={"applications": [2]}, changed=["x"], status="deploying",
               scope="model:m")
    assert (n1, n2) == (1, 2) and h.last_good()["n"] == 1
    h.finish(n2, "good", "healthy")
    assert h.last_good()["n"] == 2 and h.last_good(before=2)["n"] == 1
    assert h.good_version() == (2, 2)
    assert [r["n"] for r in h.good()] == [1, 2] and h.get(2)["scope"] == "model:m"
    assert h.get(2)["config"] == {"applications": [2]} and h.get(3) is None
    assert [r["n"] for r in h.list(limit=1)] == [2]
    for i in range(5):
        h.audit("admin", f"act {i}", i % 2 == 0, None, max_rows=3)
    log = h.audit_log()
    assert log[0]["action"] == "act 4" and log[0]["allowed"] is True and log[1]["allowed"] is False
    monkeypatch.setattr("serve_app.release.history.PRUNE_EVERY", 1)  # retention applied on every record
    h.audit("admin", "act 5", True, None, max_rows=3)
    assert [r["action"] for r in h.audit_log()] == ["act 5", "act 4", "act 3"]


def test_keys_created_changed_revoked_and_seeded(engine):
    keys = KeyStore(engine)
    assert keys.snapshot() == (0, False, {})
    _, alice = _entry("alice", requests_per_minute=60, models=["m"])
    rec = keys.create(alice)
    assert rec["tenant"] == "alice" and rec["status"] == "active" and "sha256" not in rec
    with pytest.raises(KeyExists):
        keys.create(_entry("alice")[1])
    v, ever, active = keys.snapshot()
    assert v == 1 and ever and active[alice.sha256].models == ["m"]
    changed = keys.update("alice", {"tenant": "team-a", "models": None, "tokens_per_minute": 100.0})
    assert changed["tenant"] == "team-a" and changed["models"] is None and changed["tokens_per_minute"] == 100
    buckets.take(engine, alice.sha256, "requests", 60, 1, 1, 1000.0)
    assert keys.revoke("alice")["status"] == "revoked"
    with engine.connect() as conn:  # its buckets went with it
        assert conn.execute(text("SELECT count(*) FROM rate_buckets")).scalar() == 0
    with pytest.raises(KeyNotFound):
        keys.revoke("alice")
    with pytest.raises(KeyNotFound):
        keys.update("nobody", {"tenant": "x"})
    # The key file seeds only keys the store never held: a revoked key stays revoked.
    _, bob = _entry("bob", scopes=["public", "admin"])
    assert keys.seed([alice, bob]) == 1 and keys.seed([bob]) == 0
    v, ever, active = keys.snapshot()
    assert v == 4 and set(active) == {bob.sha256} and active[bob.sha256].scopes == ["public", "admin"]
    assert [r["name"] for r in keys.records()] == ["alice", "bob"]


def test_key_book_follows_the_store_and_revoking_the_last_key_keeps_checking_on(engine):
    book = KeyBook(KeyStore(engine), None)
    assert book.refresh() and book.active is None  # no key ever: the API is open
    _, carol = _entry("carol")
    KeyStore(engine).create(carol)
    book.refresh()
    assert set(book.active) == {carol.sha256}
    KeyStore(engine).revoke("carol")
    book.refresh()
    assert book.active == {}  # checking stays on: every key is refused


def test_concurrent_leases_never_take_more_than_the_bucket_holds(engine):
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        return buckets.take(engine, "race", "requests", 50, 1, 1, 1000.0)[0]

    with ThreadPoolExecutor(8) as pool:  # 8 writers at once, 80 leases of 1 against a bucket of 50
        taken = sum(pool.map(one, range(80)))
    assert taken == 50


def test_buckets_lease_atomically(engine):
    take = buckets.take
    assert take(engine, "k", "requests", 60, 5, 1, 1000.0) == (5, 55)  # first use: a full bucket
    assert take(engine, "k", "requests", 60, 100, 50, 1000.0) == (50, 5)  # not the lease, what it needs
    taken, level = take(engine, "k", "requests", 60, 10, 10, 1000.0)
    assert taken == 0 and level == pytest.approx(5)
    assert take(engine, "k", "requests", 60, 10, 10, 1005.0)[0] == 10  # 5 s refilled 5
    assert take(engine, "k", "requests", 60, 1, 1, 990.0)[0] == 0  # a clock behind refills nothing


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _send(limiters, key, clock, per_s: float, window_s: float) -> tuple[int, int]:
    """Requests at ``per_s`` for ``window_s``, round robin over ``limiters``: (admitted, refused)."""
    async def run():
        admitted = refused = 0
        for i in range(int(per_s * window_s)):
            clock.t = start + i / per_s
            kind, wait = await limiters[i % len(limiters)].acquire(key, requests=1)
            if kind is None:
                admitted += 1
            else:
                assert kind == "requests" and wait > 0
                refused += 1
        return admitted, refused

    start = clock.t
    return asyncio.run(run())


def test_two_replicas_share_one_limit_and_one_alone_gets_all_of_it(engine, monkeypatch):
    monkeypatch.setattr("serve_app.ingress.shared_limits.STORE_TIMEOUT_S", 30)  # a slow first connect is no outage
    n = 60
    clock = Clock()
    _, key = _entry("dave", requests_per_minute=n)
    lease = n * LEASE_S / 60
    calls = []

    def take(*a):
        calls.append(a)
        return buckets.take(engine, *a)

    replicas = [SharedRateLimiter(take, clock) for _ in range(2)]
    # 4 minutes' worth of requests in 10 s across both replicas: at most the minute's burst, 10 s of refill and
    # a lease per replica are admitted.
    admitted, refused = _send(replicas, key, clock, per_s=4 * n / 60 * 6, window_s=10)
    assert n + n / 6 - 2 <= admitted <= n + n / 6 + 2 * lease and refused > 0
    assert len(calls) < refused  # an exhausted key is refused without a store call until it refills
    # A fresh key to one replica only: all of the limit (no static split).
    _, solo = _entry("erin", requests_per_minute=n)
    admitted, _ = _send(replicas[:1], solo, clock, per_s=4 * n / 60 * 6, window_s=10)
    assert n + n / 6 - 2 <= admitted <= n + n / 6 + lease
    headers = dict(replicas[0].headers(solo))
    assert headers[b"x-ratelimit-limit-requests"] == b"60" and int(headers[b"x-ratelimit-remaining-requests"]) <= 2


def test_a_store_that_does_not_answer_turns_a_replica_to_its_own_buckets():
    from sqlalchemy.exc import OperationalError

    def down(*_):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    limiter = SharedRateLimiter(down)
    _, key = _entry("frank", requests_per_minute=2)

    async def run():
        return [await limiter.acquire(key, requests=1) for _ in range(3)]

    results = asyncio.run(run())
    assert [kind for kind, _ in results] == [None, None, "requests"]  # limited, per replica: not open, not closed
    assert limiter.failed_over and dict(limiter.headers(key))[b"x-ratelimit-remaining-requests"] == b"0"


def test_the_auth_middleware_follows_the_key_book_and_fails_closed_before_its_first_read(engine):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serve_app.config.settings import AppSettings
    from serve_app.ingress.context import IngressContext
    from serve_app.ingress.errors import install_error_handlers
    from serve_app.ingress.middleware import AuthMiddleware

    ctx = IngressContext.build(AppSettings.model_validate({"model": {"enabled": False}}), state=engine,
                               controller_lookup=lambda: None)
    ctx.keys.start = lambda: None  # no background poll: the test says when the book reads the store
    app = FastAPI()
    app.add_middleware(AuthMiddleware)
    install_error_handlers(app)
    app.state.context = ctx

    @app.get("/v1/models")
    async def models():
        return {"ok": True}

    @app.get("/admin/status")
    async def admin_status():
        return {"admin": True}

    c = TestClient(app)
    r = c.get("/v1/models")  # keys not read yet: whether any exist is unknown
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert c.get("/admin/status", headers={"Authorization": "Bearer sk-x"}).status_code == 503
    ctx.keys.refresh()
    assert c.get("/v1/models").status_code == 200  # no key ever: open
    key, entry = _entry("gina")
    KeyStore(engine).create(entry)
    ctx.keys.refresh()
    with_key = {"Authorization": f"Bearer {key}"}
    assert c.get("/v1/models").status_code == 401 and c.get("/v1/models", headers=with_key).status_code == 200
    KeyStore(engine).revoke("gina")  # the last key: checking stays on, and it is refused
    ctx.keys.refresh()
    assert c.get("/v1/models").status_code == 401 and c.get("/v1/models", headers=with_key).status_code == 401


def test_a_lease_granted_after_its_deadline_is_held_not_lost(monkeypatch):
    import threading

    monkeypatch.setattr("serve_app.ingress.shared_limits.STORE_TIMEOUT_S", 0.05)
    release = threading.Event()

    def slow(*_):
        release.wait(5)
        return 4.0, 10.0  # the store granted a lease of 4, late

    limiter = SharedRateLimiter(slow)
    _, key = _entry("hank", requests_per_minute=120)

    async def run():
        first = await limiter.acquire(key, requests=1)  # past the deadline: this replica's own buckets
        release.set()
        for _ in range(100):
            if limiter._held.get((key.sha256, "requests")):
                break
            await asyncio.sleep(0.01)
        return first

    assert asyncio.run(run()) == (None, 0.0) and limiter.failed_over
    assert limiter._held[(key.sha256, "requests")] == 4.0
