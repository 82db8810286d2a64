"""T11: load beyond the LLM deployment's queue limit. With `max_ongoing_requests: 2` and
`max_queued_requests: 2` (applied as a release: Serve reconfigures, nothing restarts), a burst of 16
simultaneous requests is answered at once for what does not fit: 503 with Retry-After and an OpenAI error
body, instead of waiting for a timeout; what fits is answered normally. Nothing else (no 500, no timeout)."""

import threading
import time

import httpx
import pytest

from tests.chaos.faults import current_config, deploy
from tests.names import DEPLOYMENT, LLM
from tests.polling import wait_healthy

pytestmark = pytest.mark.chaos

BURST = 16


def _limits(config: dict, ongoing: int, queued: int) -> dict:
    for d in config["applications"][0]["deployments"]:
        if d["name"] == DEPLOYMENT:
            d["max_ongoing_requests"], d["max_queued_requests"] = ongoing, queued
    return config


def test_t11_beyond_the_queue_limit_is_a_fast_503_with_retry_after(app_url, http, admin, model_name, reliability):
    original = current_config(admin)
    started_at = wait_healthy(http)["components"][LLM]["started_at"]
    deploy(admin, _limits(current_config(admin), 2, 2), "tight queue limit")
    try:
        assert http.get("/healthz").json()["components"][LLM]["started_at"] == started_at, "the engine restarted"
        results: list[dict] = []
        gate = threading.Barrier(BURST)

        def one():
            body = {"model": model_name, "messages": [{"role": "user", "content": "Write a poem."}],
                    "max_tokens": 96, "ignore_eos": True}
            with httpx.Client(base_url=app_url, timeout=300) as c:
                gate.wait()
                t = time.perf_counter()
                r = c.post("/v1/chat/completions", json=body)
                results.append({"status": r.status_code, "latency_s": time.perf_counter() - t,
                                "retry_after": r.headers.get("retry-after"), "body": r.json()})

        threads = [threading.Thread(target=one) for _ in range(BURST)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        deploy(admin, original, "queue limits back")
    ok = sorted(r["latency_s"] for r in results if r["status"] == 200)
    rejected = [r for r in results if r["status"] == 503]
    reliability.record("T11", f"burst of {BURST} with max_ongoing_requests 2 + max_queued_requests 2", sent=len(results),
                       answered=len(ok), rejected_503=len(rejected),
                       other=sorted({r["status"] for r in results} - {200, 503}),
                       rejected_latency_p50_s=round(sorted(r["latency_s"] for r in rejected)[len(rejected) // 2], 3)
                       if rejected else None,
                       answered_latency_p50_s=round(ok[len(ok) // 2], 3) if ok else None)
    assert len(results) == BURST and {r["status"] for r in results} <= {200, 503}, results
    assert ok and rejected, [r["status"] for r in results]
    for r in rejected:
        assert r["retry_after"] and r["body"]["error"]["code"] == "service_unavailable" and r["body"]["error"]["type"], r
    # Refused at once, not after waiting in a queue: faster than the answers that were served.
    assert max(r["latency_s"] for r in rejected) < ok[0], (rejected, ok)
