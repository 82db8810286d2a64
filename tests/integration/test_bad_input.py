"""Bad input never reaches a 5xx: each malformed or out-of-bounds request gets a 4xx with the OpenAI error
body (and `param` where one field is at fault), and the app keeps serving afterwards."""

import json

import pytest

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def _chat(**kw):
    return json.dumps({"messages": MSG, **kw}).encode()


CASES = [
    # (id, path, raw body, expected status, expected param or None)
    ("non-object", CHAT, b"[1, 2, 3]", 400, None),
    ("string-body", CHAT, b'"hello"', 400, None),
    ("truncated-json", CHAT, b'{"messages": [{"role": "user", "content": "hi"}', 400, None),
    ("invalid-utf8", CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
    ("deep-nesting", CHAT, b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("messages-wrong-type", CHAT, b'{"messages": "hi"}', 400, "messages"),
    ("max-tokens-wrong-type", CHAT, _chat(max_tokens="ten"), 400, "max_tokens"),
    ("empty-messages", CHAT, b'{"messages": []}', 400, "messages"),
    ("missing-messages", CHAT, b"{}", 400, "messages"),
    ("unknown-model", CHAT, _chat(model="no-such-model"), 404, "model"),
    ("max-tokens-over-context", CHAT, _chat(max_tokens=100_000), 400, "max_tokens"),
    ("max-tokens-negative", CHAT, _chat(max_tokens=-5), 400, "max_tokens"),
    ("max-completion-tokens-zero", CHAT, _chat(max_completion_tokens=0), 400, "max_completion_tokens"),
    ("prompt-over-context", CHAT, json.dumps({"messages": [{"role": "user", "content": "hello " * 5000}]}).encode(), 400, "input_tokens"),
    ("n-negative", CHAT, _chat(n=-1), 400, "n"),
    ("n-absurd", CHAT, _chat(n=10**9), 400, "n"),
    ("temperature-negative", CHAT, _chat(temperature=-1), 400, "temperature"),
    ("temperature-absurd", CHAT, _chat(temperature=1e308), 400, "temperature"),
    ("completion-empty-prompt", "/v1/completions", b'{"prompt": ""}', 400, "prompt"),
    ("completion-max-tokens-over-context", "/v1/completions", b'{"prompt": "hi", "max_tokens": 5000}', 400, "max_tokens"),
    ("completion-unknown-model", "/v1/completions", b'{"prompt": "hi", "model": "x"}', 404, "model"),
]


@pytest.mark.parametrize("path, body, status, param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_4xx_error_body(http, path, body, status, param):
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status and err["message"]
    if param is not None:
        assert err["param"] == param


def test_streaming_request_with_bad_input_gets_plain_error(http):
    r = http.post(CHAT, content=_chat(stream=True, max_tokens=100_000), headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")


def test_ten_megabyte_body_is_413(http):
    body = json.dumps({"messages": [{"role": "user", "content": "a" * (10 * 1024 * 1024)}]}).encode()
    r = http.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413


def test_app_still_serves_after_bad_input(http):
    # Runs after the cases above in file order: the replicas took no harm.
    assert http.get("/healthz").status_code == 200
    r = http.post(CHAT, content=_chat(max_tokens=4), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
