"""Admin key checks: no key configured → the admin API is off (403) whatever is sent; a missing, malformed
or wrong key → 401; only the right bearer key passes. The key is read from the environment or a file and
only its digest is kept."""

import hashlib

import pytest

from serve_app.errors import Forbidden, Unauthorized
from serve_app.ingress.admin_gate import admin_key_digest, check_admin

pytestmark = pytest.mark.unit


def test_no_key_configured_disables_the_admin_api(monkeypatch):
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY", raising=False)
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY_FILE", raising=False)
    assert admin_key_digest() is None
    with pytest.raises(Forbidden):
        check_admin("Bearer anything", None)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic s3cret", "bearer wrong", "s3cret"])
def test_wrong_or_missing_key_is_401(header):
    with pytest.raises(Unauthorized):
        check_admin(header, hashlib.sha256(b"s3cret").digest())


def test_right_key_passes_from_env_or_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY", "s3cret")
    check_admin("Bearer s3cret", admin_key_digest())
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY")
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY_FILE", str(secret))
    digest = admin_key_digest()
    assert digest == hashlib.sha256(b"from-file").digest()
    check_admin("Bearer from-file", digest)


class _Audit:
    def __init__(self):
        self.records = []

    def remote(self, *args):
        self.records.append(args)

        async def done():
            return None

        return done()


def _gate(digest):
    from serve_app.ingress.admin_gate import AdminGate

    controller = type("Controller", (), {"audit": _Audit()})()
    gate = AdminGate(digest, lambda: controller)
    gate.controller = controller  # for the assertions on its audit calls
    return gate


def _scope(authorization):
    from types import SimpleNamespace

    return {"type": "http", "method": "GET", "path": "/admin/status", "client": ("10.0.0.7", 5000), "headers":
            [(b"authorization", authorization.encode())] if authorization else [], "state": {},
            "app": SimpleNamespace(state=SimpleNamespace())}


def test_the_gate_authorizes_once_and_the_route_audits_the_caller_it_named(monkeypatch):
    import asyncio

    from starlette.requests import Request

    import serve_app.ingress.admin_gate as admin_gate

    gate = _gate(hashlib.sha256(b"s3cret").digest())
    scope = _scope("Bearer s3cret")
    assert asyncio.run(gate.check_scope(scope)) is None
    assert scope["state"]["admin_caller"] == "admin"
    # The route does not hash the key again: it takes the gate's answer.
    monkeypatch.setattr(admin_gate, "check_admin", lambda *a, **k: pytest.fail("checked twice"))
    asyncio.run(gate.authorize(Request(scope), "status"))
    assert gate.controller.audit.records == [("admin@10.0.0.7", "status", True, None)]


def test_the_gate_refuses_and_audits_a_wrong_key_and_names_no_caller():
    import asyncio

    gate = _gate(hashlib.sha256(b"s3cret").digest())
    scope = _scope("Bearer wrong")
    status, _ = asyncio.run(gate.check_scope(scope))
    assert status == 401
    assert "admin_caller" not in scope["state"]
    assert gate.controller.audit.records == [("10.0.0.7", "GET /admin/status", False, "bad or missing key")]


def test_a_route_reached_without_the_gate_still_checks_the_key():
    import asyncio

    from starlette.requests import Request

    gate = _gate(hashlib.sha256(b"s3cret").digest())
    with pytest.raises(Unauthorized):
        asyncio.run(gate.authorize(Request(_scope("Bearer wrong")), "status"))
    asyncio.run(gate.authorize(Request(_scope("Bearer s3cret")), "status"))
    assert [r[0] for r in gate.controller.audit.records] == ["10.0.0.7", "admin@10.0.0.7"]
