"""Admin key checks: no key configured → the admin API is off (403) whatever is sent; a missing, malformed
or wrong key → 401; only the right bearer key passes. The key is read from the environment or a file and
only its digest is kept, in the format of the API keys'. Every admin route is authorized and audited by its
dependency, after the route's own parameters are valid."""

import pytest

from serve_app.errors import Forbidden, Unauthorized
from serve_app.ingress.admin_gate import admin_key_digest, check_admin
from serve_app.ingress.limits import digest
from tests.names import DEPLOYMENT

pytestmark = pytest.mark.unit


def _headers(authorization):
    return [(b"authorization", authorization.encode())] if authorization is not None else []


def test_no_key_configured_disables_the_admin_api(monkeypatch):
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY", raising=False)
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY_FILE", raising=False)
    assert admin_key_digest() is None
    with pytest.raises(Forbidden):
        check_admin(_headers("Bearer anything"), None)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic s3cret", "bearer wrong", "s3cret"])
def test_wrong_or_missing_key_is_401(header):
    with pytest.raises(Unauthorized):
        check_admin(_headers(header), digest("s3cret"))


def test_right_key_passes_from_env_or_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY", "s3cret")
    check_admin(_headers("Bearer s3cret"), admin_key_digest())
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY")
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY_FILE", str(secret))
    key_digest = admin_key_digest()
    assert key_digest == digest("from-file")
    check_admin(_headers("Bearer from-file"), key_digest)


class _Audit:
    def __init__(self):
        self.records = []

    def remote(self, *args):
        self.records.append(args)

        async def done():
            return None

        return done()


def _gate(key_digest):
    from serve_app.ingress.admin_gate import AdminGate

    controller = type("Controller", (), {"audit": _Audit()})()
    gate = AdminGate(key_digest, lambda: controller)
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

    gate = _gate(digest("s3cret"))
    scope = _scope("Bearer s3cret")
    assert asyncio.run(gate.check_scope(scope)) is None
    assert scope["state"]["admin_caller"] == "admin"
    # The route does not hash the key again: it takes the gate's answer.
    monkeypatch.setattr(admin_gate, "check_admin", lambda *a, **k: pytest.fail("checked twice"))
    asyncio.run(gate.authorize(Request(scope), "status"))
    assert gate.controller.audit.records == [("admin@10.0.0.7", "status", True, None)]


def test_the_gate_refuses_and_audits_a_wrong_key_and_names_no_caller():
    import asyncio

    gate = _gate(digest("s3cret"))
    scope = _scope("Bearer wrong")
    status, _ = asyncio.run(gate.check_scope(scope))
    assert status == 401
    assert "admin_caller" not in scope["state"]
    assert gate.controller.audit.records == [("10.0.0.7", "GET /admin/status", False, "bad or missing key")]


def test_a_route_reached_without_the_gate_still_checks_the_key():
    import asyncio

    from starlette.requests import Request

    gate = _gate(digest("s3cret"))
    with pytest.raises(Unauthorized):
        asyncio.run(gate.authorize(Request(_scope("Bearer wrong")), "status"))
    asyncio.run(gate.authorize(Request(_scope("Bearer s3cret")), "status"))
    assert [r[0] for r in gate.controller.audit.records] == ["10.0.0.7", "admin@10.0.0.7"]


class _Controller:
    """The release controller's actor handle: every method answers at once and is recorded."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        controller = self

        class _Method:
            def remote(self, *args, **kwargs):
                controller.calls.append((method, *args, *([kwargs] if kwargs else [])))

                async def done():
                    return {"method": method}

                return done()

        return _Method()

    def audited(self):
        return [c[1:] for c in self.calls if c[0] == "audit"]


def _admin_app(controller):
    from serve_app.config.settings import AppSettings
    from serve_app.ingress.context import IngressContext
    from serve_app.ingress.fastapi_app import create_app

    settings = AppSettings.model_validate({"model": {"enabled": False}})
    ctx = IngressContext.build(settings, admin_digest=digest("s3cret"), controller_lookup=lambda: controller)
    return create_app(ctx)


def test_admin_routes_record_what_they_do_once_their_parameters_are_valid():
    from fastapi.testclient import TestClient

    controller = _Controller()
    c = TestClient(_admin_app(controller))
    ok = {"Authorization": "Bearer s3cret"}
    assert c.post("/admin/scale", json={"deployment": DEPLOYMENT}, headers=ok).status_code == 400  # no replicas
    assert c.get("/admin/releases/latest", headers=ok).status_code == 400
    assert controller.audited() == []  # refused as invalid: nothing was done, nothing recorded as allowed
    assert c.post("/admin/scale", json={"deployment": DEPLOYMENT, "replicas": 2}, headers=ok).status_code == 202
    assert c.get("/admin/releases/3", headers=ok).json() == {"method": "release"}
    assert c.post("/admin/rollback", json={}, headers=ok).status_code == 202
    assert c.get("/admin/status", headers=ok).status_code == 200
    assert controller.audited() == [("admin@testclient", f"scale {DEPLOYMENT}", True, None),
                                    ("admin@testclient", "get release 3", True, None),
                                    ("admin@testclient", "rollback", True, None),
                                    ("admin@testclient", "status", True, None)]
    assert ("scale", DEPLOYMENT, 2, None, "admin@testclient") in controller.calls


def test_an_unauthorized_admin_call_is_refused_and_recorded_before_its_body_is_read():
    from fastapi.testclient import TestClient

    controller = _Controller()
    c = TestClient(_admin_app(controller))
    r = c.post("/admin/scale", content=b"{not json", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert controller.audited() == [("testclient", "POST /admin/scale", False, "bad or missing key")]
    assert [c[0] for c in controller.calls] == ["audit"]
