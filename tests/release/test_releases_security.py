"""Releases and the admin key's power: a release that would run code is refused (release/guard.py), a
secret's value is refused and a release that names a secret deploys and rolls back (config/secrets.py), and
API keys, their rate limits, model allow-lists and /healthz's public view, turned on by a release. Runs after
tests/release/test_releases.py (which starts from release 1)."""

import copy
import json

import httpx
import pytest
import yaml

from tests.chaos.faults import follow as _follow
from tests.names import LLM
from tests.polling import wait_until
from tests.postgres import remove_api_keys
from tests.release.test_releases import TINY

pytestmark = pytest.mark.release


def _deployment_env(config: dict, name: str) -> dict:
    """The env_vars of one deployment's runtime_env in a release config (created if absent)."""
    entry = next(d for d in config["applications"][0]["deployments"] if d["name"] == name)
    options = entry.setdefault("ray_actor_options", {})
    return options.setdefault("runtime_env", {}).setdefault("env_vars", {})


def test_a_release_that_would_run_code_is_refused_naming_the_field(admin):
    """The admin key changes data, not code, unless the running config allows it (release/guard.py): each
    way in is tried as an attacker holding the key would, each is a 403 naming the field, audited, and
    nothing is recorded or deployed."""
    before = admin.get("/admin/releases").json()["data"]
    current = admin.get(f"/admin/releases/{admin.get('/admin/status').json()['current_release']}").json()["config"]

    def attempt(change, field):
        config = copy.deepcopy(current)
        change(config["applications"][0])
        r = admin.post("/admin/releases", json={"config": config, "note": f"attack through {field}"})
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["param"] == field and error["code"] == "code_change_not_allowed", error
        return error["message"]

    attempts = [
        (lambda a: a["args"].setdefault("engine", {}).update(factory="os:system"), "engine.factory"),
        (lambda a: a["args"].setdefault("engine", {}).update(extra_args=["--trust-remote-code"]), "engine.extra_args"),
        (lambda a: a.setdefault("runtime_env", {}).update(pip=["requests"]), "runtime_env.pip"),
        (lambda a: a.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(PYTHONPATH="/srv"),
         "runtime_env.env_vars.PYTHONPATH"),
        (lambda a: a["args"].setdefault("releases", {}).update(allow_code_changes=True), "releases.allow_code_changes"),
    ]
    messages = [attempt(change, field) for change, field in attempts]
    assert all("releases.allow_code_changes" in m for m in messages), messages
    # A secret's value written into a release is refused too (the history would keep it), without echoing it.
    config = copy.deepcopy(current)
    _deployment_env(config, "Ingress")["OTEL_EXPORTER_OTLP_HEADERS"] = "authorization=Bearer sk-live-123"
    r = admin.post("/admin/releases", json={"config": config})
    assert r.status_code == 400 and "sk-live-123" not in r.text, r.text
    assert r.json()["error"]["param"] == "deployments.Ingress.ray_actor_options.runtime_env.env_vars." \
                                         "OTEL_EXPORTER_OTLP_HEADERS", r.text
    assert admin.get("/admin/releases").json()["data"] == before
    audit = admin.get("/admin/audit").json()["data"]  # newest first
    # Every refusal is audited with its reason (the secret's too, without its value).
    refused = [a for a in audit[:3 * (len(attempts) + 1)] if a["action"] == "deploy refused" and not a["allowed"]]
    assert len(refused) == len(attempts) + 1 and all(a["detail"] for a in refused), audit[:3 * len(attempts)]
    assert "sk-live-123" not in json.dumps(audit)


def test_api_keys_and_rate_limits_through_a_release(app_url, http, admin, admin_key, model_name, tmp_path, postgres):
    import openai

    from serve_app.ingress.limits import digest

    keys = tmp_path / "api-keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"name": "app", "sha256": digest("sk-app"), "requests_per_minute": 4},
        {"name": "ops", "sha256": digest("sk-ops"), "scopes": ["public", "admin"]},
        {"name": "tiny-only", "sha256": digest("sk-tiny"), "models": [TINY]},
    ]}))
    before = admin.get("/admin/status").json()["current_release"]
    config = copy.deepcopy(admin.get(f"/admin/releases/{before}").json()["config"])
    # The key file is the Ingress's business: set on its deployment, it replaces the Ingress alone (set on the
    # application's runtime_env it would rebuild every deployment, the engine included).
    _deployment_env(config, "Ingress")["SERVE_APP_API_KEYS_FILE"] = str(keys)
    # The admin key as a secret the release names: Ray expands ${NAME} from the environment it runs with. Were
    # it not expanded, the admin key would change and every admin call below would fail.
    _deployment_env(config, "Ingress")["SERVE_APP_ADMIN_KEY"] = "${SERVE_APP_TEST_SECRET}"
    r = admin.post("/admin/releases", json={"config": config, "note": "API keys on"})
    assert r.status_code == 202, r.text
    keys_on = r.json()["release"]
    assert _follow(admin, keys_on)["status"] == "good"
    stored = admin.get(f"/admin/releases/{keys_on}").text
    assert "${SERVE_APP_TEST_SECRET}" in stored and admin_key not in stored
    assert admin_key not in admin.get("/admin/status").text + admin.get("/admin/audit").text
    try:
        assert http.get("/healthz").status_code == 200 and http.get("/livez").status_code == 200
        # With API keys on, /healthz stays public but shows states only; the admin key sees everything.
        shown = http.get("/healthz").json()
        assert all(set(c) <= {"status", "age_s"} for c in shown["components"].values()), shown
        assert "pid" in http.get("/healthz", headers={"Authorization": f"Bearer {admin_key}"}).json()["components"][LLM]
        r = http.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert http.get("/v1/models", headers={"Authorization": "Bearer sk-nope"}).status_code == 401
        # The unmodified openai SDK with its api_key; a key over its request rate gets 429 with Retry-After.
        client = openai.OpenAI(base_url=f"{app_url}/v1", api_key="sk-app", max_retries=0)
        statuses = []
        for _ in range(6):
            try:
                raw = client.chat.completions.with_raw_response.create(model=model_name, max_tokens=2,
                                                                       messages=[{"role": "user", "content": "hi"}])
                # OpenAI's rate-limit headers: what the key has left of its minute.
                assert raw.headers["x-ratelimit-limit-requests"] == "4"
                assert int(raw.headers["x-ratelimit-remaining-requests"]) == 3 - len(statuses)
                statuses.append(200)
            except openai.RateLimitError as exc:
                statuses.append(429)
                assert exc.code == "rate_limit_exceeded" and exc.type == "rate_limit_error"
                wait = int(exc.response.headers["retry-after"])
                assert wait >= 1 and exc.response.headers["x-ratelimit-remaining-requests"] == "0"
                # The SDK's own retry waits what Retry-After says (it honours up to 60 s), not its backoff.
                retry_in = client._calculate_retry_timeout(1, openai._models.FinalRequestOptions(
                    method="post", url="/chat/completions", max_retries=1), exc.response.headers)
                assert retry_in == wait <= 60
        assert statuses[:4] == [200] * 4 and statuses[4:] == [429, 429], statuses
        # A key's model allow-list: other models are answered as unknown ones (no name leaks) and not listed.
        tiny = {"Authorization": "Bearer sk-tiny"}
        assert [m["id"] for m in http.get("/v1/models", headers=tiny).json()["data"]] == [TINY]
        chat = {"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        assert http.post("/v1/chat/completions", headers=tiny, json={"model": TINY, **chat}).status_code == 200
        hidden = http.post("/v1/chat/completions", headers=tiny, json={"model": model_name, **chat})
        unknown = http.post("/v1/chat/completions", headers=tiny, json={"model": "no-such-model", **chat})
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.json()["error"]["message"].replace(model_name, "X") == \
            unknown.json()["error"]["message"].replace("no-such-model", "X")
        assert http.get(f"/v1/models/{model_name}", headers=tiny).status_code == 404
        assert http.post("/v1/embeddings", headers=tiny, json={"input": "x"}).status_code == 404
        # An admin-scope key opens the admin API; the admin key still does.
        assert httpx.get(f"{app_url}/admin/status", headers={"Authorization": "Bearer sk-ops"}).status_code == 200
        assert httpx.get(f"{app_url}/admin/status", headers={"Authorization": "Bearer sk-app"}).status_code == 401
    finally:
        r = admin.post("/admin/rollback", json={"release": before})
        assert r.status_code == 202, r.text
        assert _follow(admin, r.json()["release"])["status"] == "good"
    # The file seeded the state store, whose keys outlive the release that named the file: still checked.
    assert http.get("/v1/models").status_code == 401
    assert {k["name"]: k["source"] for k in admin.get("/admin/keys").json()["data"]} == \
        {"app": "file", "ops": "file", "tiny-only": "file"}
    remove_api_keys(postgres.url)
    wait_until(lambda: http.get("/v1/models").status_code == 200, 10, what="keys off again")
    # A rollback to the release that names the secret works: the reference is expanded again.
    r = admin.post("/admin/rollback", json={"release": keys_on})
    assert r.status_code == 202 and _follow(admin, r.json()["release"])["status"] == "good", r.text
    try:
        assert http.get("/v1/models").status_code == 401 and admin.get("/admin/status").status_code == 200
    finally:
        r = admin.post("/admin/rollback", json={"release": before})
        assert r.status_code == 202 and _follow(admin, r.json()["release"])["status"] == "good", r.text
        remove_api_keys(postgres.url)  # the file seeded them again
        wait_until(lambda: http.get("/v1/models").status_code == 200, 10, what="keys off again")
