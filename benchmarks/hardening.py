"""The hardening figures, against a running app (loopback only, bounded counts):

- search latency while a large document (500 000 characters, about half the default write budget of one
  request, vector.max_ingest_chunks_per_request) is being ingested vs idle (p50, p99 and their ratio): the vector replica must keep answering
  while it chunks, embeds and writes a large document (a 4 MiB one is refused: see the refusals);
- /healthz latency (p99) while idle and during that ingest;
- what each refusal an attacker with the admin key meets answers (status, code, param, message): releases
  that would run code, a secret's value in a release, oversized document metadata.

    python -m benchmarks.hardening --url http://127.0.0.1:8000 [--admin-key KEY]

Writes benchmarks/results/hardening.json. The admin key defaults to $SERVE_APP_ADMIN_KEY.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx

OUT = Path(__file__).resolve().parent / "results" / "hardening.json"
WORDS = ("replica engine vector store release canary adapter token stream search chunk model ingress "
         "deadline probe health").split()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def _latencies(c: httpx.Client, n: int, request) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        r = request(c, i)
        assert r.status_code == 200, r.text[:300]
        out.append(time.perf_counter() - t)
    return out


def _search(c: httpx.Client, i: int) -> httpx.Response:
    return c.post("/v1/search", json={"query": f"how does the {WORDS[i % len(WORDS)]} recover", "top_k": 5})


def _figures(lat: list[float]) -> dict:
    return {"n": len(lat), "p50_ms": round(statistics.median(lat) * 1000, 1), "p99_ms": round(_pct(lat, 0.99) * 1000, 1)}


def search_during_ingest(url: str, n: int, size: int) -> dict:
    text = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(size // 8))[:size]
    with httpx.Client(base_url=url, timeout=600) as c:
        c.post("/v1/documents", json={"documents": [{"id": "bench-small", "text": " ".join(WORDS) * 4}]})
        idle = _latencies(c, n, _search)
        health_idle = _latencies(c, n, lambda c, i: c.get("/healthz"))
        result: dict = {}

        def ingest():
            t = time.perf_counter()
            r = c.post("/v1/documents", json={"documents": [{"id": "bench-large", "text": text}]})
            result.update(status=r.status_code, seconds=round(time.perf_counter() - t, 1),
                          chunks=r.json()["documents"][0]["chunks"] if r.status_code == 200 else r.text[:300])

        worker = threading.Thread(target=ingest)
        worker.start()
        time.sleep(0.5)  # the request is in (its body sent) before the first search
        busy, health_busy = [], []
        with httpx.Client(base_url=url, timeout=600) as probe:
            i = 0
            while worker.is_alive() and len(busy) < n:
                busy += _latencies(probe, 1, lambda c, _, i=i: _search(c, i))
                health_busy += _latencies(probe, 1, lambda c, _: c.get("/healthz"))
                i += 1
        worker.join()
        c.delete("/v1/documents/bench-large")
    return {"document_bytes": len(text.encode()), "ingest": result, "search_idle": _figures(idle),
            "search_during_ingest": _figures(busy),
            "p99_ratio": round(_pct(busy, 0.99) / _pct(idle, 0.99), 2),
            "healthz_idle": _figures(health_idle), "healthz_during_ingest": _figures(health_busy)}


def refusals(url: str, key: str) -> list[dict]:
    """Each way an attacker holding the admin key (or writing documents) would try, and the answer."""
    out = []
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        current = c.get("/admin/status").json()["current_release"]
        base = c.get(f"/admin/releases/{current}").json()["config"]

        def release(what: str, change) -> None:
            config = copy.deepcopy(base)
            change(config["applications"][0])
            r = c.post("/admin/releases", json={"config": config, "note": f"benchmark: {what}"})
            out.append({"attempt": what, "status": r.status_code, **_error(r)})
            assert r.status_code >= 400, f"{what} was accepted: {r.text}"

        release("engine.factory = os:system", lambda a: a["args"].setdefault("engine", {}).update(factory="os:system"))
        release("--trust-remote-code", lambda a: a["args"].setdefault("engine", {}).update(
            extra_args=["--trust-remote-code"]))
        release("--chat-template /etc/passwd", lambda a: a["args"].setdefault("engine", {}).update(
            extra_args=["--chat-template", "/etc/passwd"]))
        release("runtime_env pip", lambda a: a.setdefault("runtime_env", {}).update(pip=["requests"]))
        release("PYTHONPATH", lambda a: a.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(
            PYTHONPATH="/srv/evil"))
        release("allow_code_changes on", lambda a: a["args"].setdefault("releases", {}).update(allow_code_changes=True))
        release("a secret's value", lambda a: a.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(
            OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer sk-live"))
        for what, doc in [("a 4 MiB document", {"id": "x", "text": "word " * (4 * 1024 * 1024 // 5 - 20)}),
                          ("metadata value of 2 MB", {"id": "x", "text": "t", "metadata": {"k": "v" * 2_000_000}}),
                          ("1000 metadata keys", {"id": "x", "text": "t", "metadata": {f"k{i}": i for i in range(1000)}})]:
            r = c.post("/v1/documents", json={"documents": [doc]})
            out.append({"attempt": what, "status": r.status_code, **_error(r)})
    return out


def _error(r: httpx.Response) -> dict:
    try:
        e = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return {"message": r.text[:200]}
    return {"code": e.get("code"), "param": e.get("param"), "message": e.get("message", "")[:240]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--admin-key", default=os.environ.get("SERVE_APP_ADMIN_KEY"))
    ap.add_argument("--searches", type=int, default=40)
    ap.add_argument("--document-bytes", type=int, default=500_000, help="within the default write budget")
    args = ap.parse_args()
    assert httpx.URL(args.url).host in ("127.0.0.1", "localhost"), "load goes to loopback only"
    report = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "search": search_during_ingest(args.url, args.searches, args.document_bytes)}
    if args.admin_key:
        report["refusals"] = refusals(args.url, args.admin_key)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
