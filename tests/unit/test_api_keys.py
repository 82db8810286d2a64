"""API keys and per-key rate limits (serve_app/ingress/limits.py, AuthMiddleware), without Ray.

Invariants: with keys configured every route but /healthz and /livez needs a known key (401 with the error
body otherwise, the body never read); a key over its request rate gets 429 with Retry-After and its bucket
refills with time; a request over the token rate is refused before any work; keys are stored only as
digests; a key file with a problem is refused naming it; admin-scope keys open /admin/*.
"""

import asyncio
import re
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serve_app.config.settings import AppSettings
from serve_app.errors import Forbidden, InvalidRequest, RateLimited, Unauthorized
from serve_app.ingress.admin_gate import check_admin
from serve_app.ingress.context import IngressContext
from serve_app.ingress.errors import install_error_handlers
from serve_app.ingress.limits import KeyEntry, RateLimiter, TokenBucket, charge_tokens, digest, load_keys
from serve_app.ingress.middleware import AuthMiddleware, BodyLimitMiddleware
from tests.fakes.handles import Method

pytestmark = pytest.mark.unit


def test_token_bucket_refills_and_says_how_long_to_wait():
    b = TokenBucket(60.0, stamp=0.0)  # one per second, burst 60
    assert b.wait_s(60, now=0.0) == 0.0
    b.take(60)
    assert b.wait_s(1, now=0.0) == pytest.approx(1.0)
    assert b.wait_s(1, now=0.5) == pytest.approx(0.5)
    assert b.wait_s(1, now=1.0) == 0.0
    assert b.wait_s(61, now=100.0) == float("inf")  # more than a minute's worth never fits


def test_limiter_charges_both_buckets_or_neither():
    key = KeyEntry(name="a", sha256=digest("k"), requests_per_minute=2, tokens_per_minute=100)
    lim = RateLimiter()
    assert lim.admit(key, requests=1, tokens=60, now=0.0) == (None, 0.0)
    kind, wait = lim.admit(key, requests=1, tokens=60, now=0.0)  # tokens short: nothing charged
    assert kind == "tokens" and wait == pytest.approx(12.0)
    assert lim.admit(key, requests=1, tokens=40, now=0.0) == (None, 0.0)
    kind, wait = lim.admit(key, requests=1, now=0.0)
    assert kind == "requests" and wait == pytest.approx(30.0)
    unlimited = KeyEntry(name="b", sha256=digest("j"))
    assert all(lim.admit(unlimited, requests=1, tokens=10**6) == (None, 0.0) for _ in range(100))


def test_key_file_is_validated(tmp_path):
    good = tmp_path / "keys.yaml"
    good.write_text(f"keys:\n  - name: alice\n    sha256: {digest('sk-a')}\n    requests_per_minute: 5\n")
    keys = load_keys(good)
    assert keys[digest("sk-a")].name == "alice" and keys[digest("sk-a")].scopes == ["public"]
    dup = tmp_path / "dup.yaml"
    dup.write_text(f"keys:\n  - {{name: a, sha256: {digest('x')}}}\n  - {{name: b, sha256: {digest('x')}}}\n")
    with pytest.raises(ValueError, match="same key"):
        load_keys(dup)
    raw = tmp_path / "raw.yaml"
    raw.write_text("keys:\n  - {name: a, sha256: sk-plaintext-key}\n")
    with pytest.raises(ValueError, match="sha256"):
        load_keys(raw)
    with pytest.raises(ValueError, match="cannot read"):
        load_keys(tmp_path / "missing.yaml")


def _context(api_keys=None, admin_digest=None, controller=None) -> IngressContext:
    settings = AppSettings.model_validate({"model": {"enabled": False}, "ingress": {"max_body_bytes": 1 << 20}})
    return IngressContext.build(settings, api_keys=api_keys, admin_digest=admin_digest,
                                controller_lookup=lambda: controller)


def _app(keys, admin_digest=None):
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AuthMiddleware)
    install_error_handlers(app)
    audited = SimpleNamespace(audit=Method(lambda *record: None))
    app.state.context = _context(keys, admin_digest, audited)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        await charge_tokens(request, body.get("max_tokens", 16))
        key = getattr(request.state, "api_key", None)
        return {"who": key.name if key else None}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/admin/status")
    async def admin():
        return {"admin": True}

    return app


def test_every_route_but_health_needs_a_known_key_and_limits_apply():
    alice = KeyEntry(name="alice", sha256=digest("sk-alice"), requests_per_minute=3, tokens_per_minute=100)
    c = TestClient(_app({alice.sha256: alice}))
    assert c.get("/healthz").status_code == 200
    r = c.get("/admin/status", headers={"Authorization": "Bearer sk-alice"})
    assert r.status_code == 403 and "admin API is disabled" in r.text  # the admin routes keep their own check
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic sk-alice"}):
        r = c.post("/v1/chat/completions", json={}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert "sk-alice" not in r.text and "sk-wrong" not in r.text
    ok = {"Authorization": "Bearer sk-alice"}
    r = c.post("/v1/chat/completions", json={"max_tokens": 10}, headers=ok)
    assert r.json() == {"who": "alice"}
    # OpenAI's rate-limit headers, as the buckets stand after the request was charged.
    assert (r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]) == ("3", "2")
    assert (r.headers["x-ratelimit-limit-tokens"], r.headers["x-ratelimit-remaining-tokens"]) == ("100", "90")
    assert re.fullmatch(r"\d+s", r.headers["x-ratelimit-reset-requests"])  # 20 s for one of 3 per minute
    assert re.fullmatch(r"\d+(ms|s)", r.headers["x-ratelimit-reset-tokens"])
    # Over the token rate: 429 before any work, with Retry-After; a request alone over the minute: 400.
    r = c.post("/v1/chat/completions", json={"max_tokens": 95}, headers=ok)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    r = c.post("/v1/chat/completions", json={"max_tokens": 500}, headers=ok)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    # Three requests per minute were used (the refused ones count as requests): the next is refused.
    r = c.post("/v1/chat/completions", json={"max_tokens": 1}, headers=ok)
    assert r.status_code == 429 and "requests per minute" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-requests" not in c.get("/healthz").headers  # no key, no limits to state


def test_the_admin_key_opens_the_admin_routes_without_being_an_api_key():
    """/admin/* is not under the public API's key check: with API keys on, the admin key (no API key) passes
    and an API key without the admin scope does not."""
    alice = KeyEntry(name="alice", sha256=digest("sk-alice"))
    c = TestClient(_app({alice.sha256: alice}, admin_digest=digest("s3cret")))
    assert c.get("/admin/status", headers={"Authorization": "Bearer s3cret"}).json() == {"admin": True}
    assert c.get("/admin/status", headers={"Authorization": "Bearer sk-alice"}).status_code == 401
    assert c.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer s3cret"}).status_code == 401


def test_without_keys_nothing_is_required():
    c = TestClient(_app(None))
    r = c.post("/v1/chat/completions", json={"max_tokens": 10**6})
    assert r.status_code == 200 and r.json() == {"who": None}  # no key needed, no limit applied


def test_charge_without_a_key_is_free():
    class State:
        pass

    class Req:
        state = State()

    asyncio.run(charge_tokens(Req(), 10**9))  # no api_key on the request: no limit, no error


def test_admin_scope_keys_open_the_admin_api():
    admin = KeyEntry(name="ops", sha256=digest("sk-ops"), scopes=["public", "admin"])
    user = KeyEntry(name="app", sha256=digest("sk-app"))
    keys = {admin.sha256: admin, user.sha256: user}
    def bearer(key):
        return [(b"authorization", f"Bearer {key}".encode())]

    assert check_admin(bearer("sk-ops"), None, keys) == "ops"
    with pytest.raises(Unauthorized):
        check_admin(bearer("sk-app"), None, keys)  # a key without the scope
    assert check_admin(bearer("s3cret"), digest("s3cret"), keys) == "admin"
    with pytest.raises(Forbidden):
        check_admin(bearer("sk-app"), None, {user.sha256: user})  # no admin key, no admin-scope key: off


def test_rate_limited_maps_to_429_with_retry_after():
    from serve_app.ingress.errors import response_for

    r = response_for(RateLimited("slow down", 2.2))
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert response_for(InvalidRequest("x", "max_tokens")).status_code == 400


def test_the_admin_gate_refuses_before_the_body_is_read():
    """``/admin/*`` requests pass the Ingress's admin gate in the middleware, before routing: a caller without
    the key learns nothing about its body or path (401, never a 400 or 404), and no route runs."""
    app = FastAPI()
    app.add_middleware(AuthMiddleware)
    install_error_handlers(app)
    reached, audited = [], []
    controller = SimpleNamespace(audit=Method(lambda actor, action, allowed, detail: audited.append(action)))
    app.state.context = _context(admin_digest=digest("s3cret"), controller=controller)

    @app.post("/admin/scale")
    async def scale(body: dict):
        reached.append(body)
        return body

    c = TestClient(app)
    for kwargs in ({"content": b"{not json"}, {"json": {"x": 1}}):
        r = c.post("/admin/scale", **kwargs)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert c.get("/admin/nowhere").status_code == 401
    assert reached == [] and audited == ["POST /admin/scale", "POST /admin/scale", "GET /admin/nowhere"]
    ok = {"Authorization": "Bearer s3cret"}
    assert c.post("/admin/scale", content=b"{not json", headers=ok).status_code == 400
    assert c.post("/admin/scale", json={"x": 1}, headers=ok).json() == {"x": 1}
    assert c.get("/admin/nowhere", headers=ok).status_code == 404
