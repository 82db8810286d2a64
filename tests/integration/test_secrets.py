"""Secrets never leak: the admin key, and a key a client sent that is wrong, appear in no answer of the app
(error bodies, /admin/status, release history, audit log, /metrics) and in none of its log files (the
Serve component logs and the `serve-app run` output), after each has been used on public and admin routes."""

import json
import secrets
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.app


def test_keys_appear_in_no_answer_metric_or_log(app_proc, app_url, http, admin, admin_key, serve_logs_dir):
    wrong = "sk-wrong-" + secrets.token_hex(12)
    seen: list[str] = []
    with httpx.Client(base_url=app_url, timeout=60, headers={"Authorization": f"Bearer {wrong}"}) as bad:
        for path in ("/admin/status", "/admin/releases", "/admin/audit", "/v1/models"):
            seen.append(bad.get(path).text)
        seen.append(bad.post("/admin/rollback", json={}).text)
        seen.append(bad.post("/v1/chat/completions", json={"messages": "x"}).text)
    # The admin key without its scheme.
    seen.append(http.get("/admin/status", headers={"Authorization": admin_key}).text)

    status = admin.get("/admin/status").json()
    seen.append(json.dumps(status))
    releases = admin.get("/admin/releases").json()["data"]
    seen.append(json.dumps(releases))
    for rel in releases:
        seen.append(admin.get(f"/admin/releases/{rel['n']}").text)
    seen.append(admin.get("/admin/audit").text)
    seen.append(http.get("/metrics").text)
    assert not any(admin_key in text for text in seen), "the admin key is in an answer"
    assert not any(wrong in text for text in seen), "a client's wrong key is in an answer"

    logs = [p for p in Path(serve_logs_dir).rglob("*") if p.is_file()] + [Path(app_proc.log_path)]
    assert len(logs) > 1
    for log in logs:
        text = log.read_text(errors="replace")
        assert admin_key not in text and wrong not in text, f"a key is in {log.name}"
