"""Health and request ids: /healthz reports each component and the release; every response, errors
included, carries X-Request-Id (the client's, or a generated one)."""

import uuid

import pytest

from tests.names import LLM

pytestmark = pytest.mark.app


def test_healthz(http):
    r = http.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["release"] == "dev"
    assert body["components"][LLM]["status"] == "ok"
    assert body["components"][LLM]["model"] == "SmolLM2-135M-Instruct"
    # Every required component, each with its own detail; the release controller is required because the
    # session app has an admin key (the admin API is on).
    assert set(body["components"]) == {LLM, "llm:tiny-random-llama", "vector", "embedder", "agent", "release_controller"}
    assert all(c["status"] == "ok" for c in body["components"].values()), body
    assert body["components"]["release_controller"]["last_good_release"] >= 1


def test_livez(http):
    assert http.get("/livez").json() == {"status": "ok"}


def test_request_id_is_echoed(http):
    rid = f"test-{uuid.uuid4().hex}"
    r = http.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"X-Request-Id": rid},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == rid


def test_request_id_is_generated_and_on_errors(http):
    r = http.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and len(r.headers["x-request-id"]) >= 8
    a = http.get("/healthz").headers["x-request-id"]
    b = http.get("/healthz").headers["x-request-id"]
    assert a != b


def test_unknown_route_is_404_error_body(http):
    r = http.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
