"""Secrets as references (serve_app/config/secrets.py) and the audit log's retention (release/history.py)."""

import time

import pytest

from serve_app.config import secrets
from serve_app.release import history as history_module
from serve_app.release.history import History

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name, value, plain", [
    ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer abc", True),
    ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=${OTLP_AUTH}", False),
    ("SERVE_APP_ADMIN_KEY", "hunter2", True),
    ("SERVE_APP_ADMIN_KEY", "${ADMIN_KEY}", False),
    ("SERVE_APP_ADMIN_KEY_FILE", "/run/secrets/admin", False),  # where the secret is, not the secret
    ("HF_TOKEN", "hf_abc", True),
    ("aws_secret_access_key", "x", True),
    ("TOKENIZERS_PARALLELISM", "false", False),  # a name part, not a substring
    ("LOG_LEVEL", "debug", False),
    ("HF_TOKEN", "", False),
])
def test_a_secret_is_told_by_its_name_and_passes_as_a_reference(name, value, plain):
    assert secrets.plain_secret(name, value) is plain


@pytest.mark.parametrize("value", ["postgresql://app:pw@db/serve", "${STATE_URL}"])
def test_the_state_store_url_is_refused_in_a_config_whatever_its_value(value):
    config = {"applications": [{"name": "serve_app", "runtime_env": {"env_vars": {"SERVE_APP_STATE_URL": value}}}]}
    with pytest.raises(ValueError, match="applications\\[0\\].runtime_env.env_vars.SERVE_APP_STATE_URL: the state "
                                         "store's location is read from the environment") as caught:
        secrets.check_secrets(config)
    assert "pw@" not in str(caught.value)


def test_a_config_with_a_secret_value_is_refused_naming_the_field_and_redacted_on_read():
    config = {"applications": [{"name": "a", "runtime_env": {"env_vars": {"HF_TOKEN": "${HF_TOKEN}"}},
                                "deployments": [{"name": "Ingress", "ray_actor_options": {"runtime_env": {
                                    "env_vars": {"SERVE_APP_ADMIN_KEY": "hunter2", "LOG_LEVEL": "x"}}}}]}]}
    field = "applications[0].deployments.Ingress.ray_actor_options.runtime_env.env_vars.SERVE_APP_ADMIN_KEY"
    assert secrets.secret_problems(config) == [field]
    with pytest.raises(ValueError) as info:
        secrets.check_secrets(config)
    assert field in str(info.value) and "hunter2" not in str(info.value)
    shown = secrets.redacted(config)["applications"][0]
    assert shown["deployments"][0]["ray_actor_options"]["runtime_env"]["env_vars"] == {
        "SERVE_APP_ADMIN_KEY": secrets.REDACTED, "LOG_LEVEL": "x"}
    assert shown["runtime_env"]["env_vars"] == {"HF_TOKEN": "${HF_TOKEN}"}


def test_the_audit_log_keeps_at_most_its_rows_and_age(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "PRUNE_EVERY", 1)
    h = History(tmp_path)
    for i in range(150):
        h.audit("10.0.0.1", f"GET /admin/{i}", False, "bad or missing key", max_rows=100)
    log = h.audit_log(limit=1000)
    assert len(log) == 100 and log[0]["action"] == "GET /admin/149" and log[-1]["action"] == "GET /admin/50"
    old = time.time() - 10
    monkeypatch.setattr(history_module.time, "time", lambda: old)
    h.audit("x", "old", True)
    monkeypatch.undo()
    monkeypatch.setattr(history_module, "PRUNE_EVERY", 1)
    h.audit("x", "new", True, max_age_s=5)
    actions = [a["action"] for a in h.audit_log(limit=1000)]
    assert "old" not in actions and actions[0] == "new" and len(actions) == 101


def test_the_last_good_release_is_served_from_memory_between_writes(tmp_path):
    h = History(tmp_path)
    n = h.add(actor="a", kind="deploy", note=None, config={"x": 1}, changed=[], status="good")
    first = h.last_good()
    first["config"]["x"] = 2  # a caller's change does not reach the cache
    assert h.last_good()["config"] == {"x": 1} and h.last_good()["n"] == n
    m = h.add(actor="a", kind="deploy", note=None, config={"x": 3}, changed=[], status="deploying")
    h.finish(m, "good", "ok")
    assert h.last_good()["n"] == m and h.last_good(before=m)["n"] == n
