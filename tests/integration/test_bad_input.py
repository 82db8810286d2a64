"""Bad input never reaches a 5xx: each malformed or out-of-bounds request gets a 4xx with the OpenAI error
body (and `param` where one field is at fault), and the app keeps serving afterwards (T4, T5). Bodies
that arrive slowly are answered without holding up other clients; a body abandoned half-way harms nothing.
Generated inputs: tests/chaos/test_t4_fuzz.py."""

import json
import socket
import threading
import time

import httpx
import pytest

from serve_app.errors import status_of

pytestmark = pytest.mark.app

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
    # JSON that parses but is odd: duplicate keys (the last one wins), numbers beyond every range.
    ("duplicate-keys", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "max_tokens": -1}',
     400, "max_tokens"),
    ("integer-of-5000-digits", CHAT, b'{"messages": [], "max_tokens": 1' + b"0" * 5000 + b"}", 400, None),
    ("integer-of-31-digits", CHAT, _chat(max_tokens=10**30), 400, "max_tokens"),
    ("float-overflow", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', 400, "temperature"),
    ("nan", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "temperature"),
    ("infinity", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', 400, "top_p"),
    ("seed-beyond-int64", CHAT, _chat(seed=10**40), 400, "seed"),
    ("logit-bias-out-of-vocab", CHAT, _chat(logit_bias={"99999999999": 5}), 400, "logit_bias"),
    # Found by the fuzzer: values of a type that vLLM's own validators do not expect.
    ("structured-outputs-false", CHAT, _chat(structured_outputs=False), 400, None),
    ("structured-outputs-number", "/v1/completions", b'{"prompt": "hi", "structured_outputs": 6e-69}', 400, None),
    ("stream-options-number", CHAT, _chat(stream=True, stream_options=3), 400, None),
    ("search-filter-number-with-fraction", "/v1/search", b'{"query": "q", "filter": {"weight": 6.3e16}}', 200, None),
    ("search-filter-integer-beyond-int64", "/v1/search", b'{"query": "q", "filter": {"n": 1' + b"0" * 30 + b"}}",
     200, None),
]


@pytest.mark.parametrize("path, body, status, param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_4xx_error_body(http, path, body, status, param):
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    if status == 200:  # an odd value that is valid: answered, not a server error
        return
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["code"], str) and status_of(err) == status and err["message"]
    if param is not None:
        assert err["param"] == param


def test_streaming_request_with_bad_input_gets_plain_error(http):
    r = http.post(CHAT, content=_chat(stream=True, max_tokens=100_000), headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")


def test_ten_megabyte_body_is_413(http):
    body = json.dumps({"messages": [{"role": "user", "content": "a" * (10 * 1024 * 1024)}]}).encode()
    r = http.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def _drip(app_url, body: bytes, pieces: int, delay_s: float, out: list):
    step = len(body) // pieces + 1

    def parts():
        for i in range(0, len(body), step):
            time.sleep(delay_s)
            yield body[i:i + step]

    r = httpx.post(app_url + CHAT, content=parts(), headers={"content-type": "application/json"}, timeout=120)
    out.append(r.status_code)


def test_slow_drip_bodies_are_answered_and_do_not_hold_up_others(app_url, http):
    done: list = []
    drips = [threading.Thread(target=_drip, args=(app_url, _chat(max_tokens=2), 10, 0.5, done)) for _ in range(4)]
    for t in drips:
        t.start()
    time.sleep(1)
    r = http.post(CHAT, content=_chat(max_tokens=2), headers={"content-type": "application/json"})
    assert r.status_code == 200 and not done, "the normal request waited for the slow bodies"
    for t in drips:
        t.join(120)
    assert done == [200] * 4


def test_body_abandoned_half_way_harms_nothing(app_url, http):
    host, port = app_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 100000\r\n\r\n".encode() + _chat(max_tokens=2)[:20])
        time.sleep(1)
    r = http.post(CHAT, content=_chat(max_tokens=2), headers={"content-type": "application/json"})
    assert r.status_code == 200


def test_app_still_serves_after_bad_input(http):
    # Runs after the cases above in file order: the replicas took no harm.
    assert http.get("/healthz").status_code == 200
    r = http.post(CHAT, content=_chat(max_tokens=4), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
