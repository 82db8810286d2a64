"""Bounded chat load on loopback with one record per request, shared by the release benchmark and the
fault-injection suite (tests/chaos).

Each client thread sends chat requests one after another (odd-numbered clients stream) until stopped or
until ``max_requests`` are recorded. A record holds when the request started and ended, its HTTP status (or
the transport error's name), whether it succeeded, which LLM replica answered (the ``X-Served-By`` header),
and for a stream whether it ended with ``[DONE]`` and whether an in-band error event came before it. A
stream counts as successful only when it ended with ``[DONE]`` and carried no error event.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx


class Load:
    def __init__(self, url: str, model: str, clients: int = 4, max_requests: int = 5000, stream_tokens: int = 24,
                 plain_tokens: int = 4, pause_s: float = 0.05, headers: dict[str, str] | None = None,
                 streams: bool = True, prompt: str = "Count to ten."):
        self.url, self.model, self.max, self.prompt = url, model, max_requests, prompt
        self.stream_tokens, self.plain_tokens, self.pause_s = stream_tokens, plain_tokens, pause_s
        self.headers = headers or {}
        self.stop = threading.Event()
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._open_streams = 0  # streams that have sent an event and not yet ended
        self.threads = [threading.Thread(target=self._run, args=(streams and i % 2 == 1,), daemon=True)
                        for i in range(clients)]

    def _one(self, c: httpx.Client, stream: bool) -> dict[str, Any]:
        body = {"model": self.model, "messages": [{"role": "user", "content": self.prompt}],
                "max_tokens": self.stream_tokens if stream else self.plain_tokens, "stream": stream}
        rec: dict[str, Any] = {"t": time.time(), "stream": stream, "replica": None, "done": False, "error_event": False}
        try:
            if stream:
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    rec["replica"] = r.headers.get("x-served-by")
                    rec["retry_after"] = r.headers.get("retry-after")
                    lines = []
                    try:
                        for x in r.iter_lines():
                            if not x.startswith("data: "):
                                continue
                            lines.append(x)
                            if len(lines) == 1:
                                with self._lock:
                                    self._open_streams += 1
                    finally:
                        if lines:
                            with self._lock:
                                self._open_streams -= 1
                rec["done"] = bool(lines) and lines[-1] == "data: [DONE]"
                rec["error_event"] = any(x.startswith('data: {"error"') for x in lines)
                rec["ok"] = r.status_code == 200 and rec["done"] and not rec["error_event"]
            else:
                r = c.post("/v1/chat/completions", json=body)
                rec["replica"] = r.headers.get("x-served-by")
                rec["retry_after"] = r.headers.get("retry-after")
                rec["ok"] = r.status_code == 200
            rec["status"] = r.status_code
        except httpx.HTTPError as exc:
            rec["ok"], rec["status"] = False, type(exc).__name__
        rec["end"] = time.time()
        return rec

    def _run(self, stream: bool) -> None:
        with httpx.Client(base_url=self.url, timeout=300, headers=self.headers) as c:
            while not self.stop.is_set() and len(self.records) < self.max:
                rec = self._one(c, stream)
                with self._lock:
                    self.records.append(rec)
                time.sleep(self.pause_s)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(300)

    def wait_for(self, count: int, started_after: float | None = None, streams: bool = False,
                 timeout_s: float = 120) -> list[dict[str, Any]]:
        """Wait (polling, bounded) until ``count`` requests that started after ``started_after`` (default: now)
        have finished, streams only if ``streams``; returns them. Instead of sleeping for traffic to happen."""
        since = time.time() if started_after is None else started_after
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                done = [r for r in self.records if r["t"] > since and (r["stream"] or not streams)]
            if len(done) >= count:
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)} of {count} requests finished in {timeout_s:g}s")
            time.sleep(0.2)

    def wait_stream_open(self, timeout_s: float = 120) -> None:
        """Wait (polling, bounded) until a stream has sent its first event and not yet ended: the moment a
        fault must come for it to cut a stream in flight."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self._open_streams > 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no stream was open within {timeout_s:g}s")
            time.sleep(0.02)

    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if not r["ok"]]

    def summary(self, fault_at: float | None = None) -> dict[str, Any]:
        """Counts for a report: sent, failed, their statuses, the failure window (first failed request's start
        to last failed request's end) and, given the fault time, how long after it the last failure ended
        and the first request that started after the last failure succeeded (recovery)."""
        failed = self.failed()
        out: dict[str, Any] = {
            "sent": len(self.records),
            "streams": sum(r["stream"] for r in self.records),
            "failed": len(failed),
            "failed_statuses": sorted({str(r["status"]) for r in failed}),
            "failure_window_s": round(max(r["end"] for r in failed) - min(r["t"] for r in failed), 2) if failed else 0.0,
        }
        if fault_at is not None:
            last_fail = max((r["end"] for r in failed), default=fault_at)
            after = [r["end"] for r in self.records if r["ok"] and r["t"] >= last_fail]
            out["last_failure_after_fault_s"] = round(last_fail - fault_at, 2) if failed else None
            out["recovered_after_fault_s"] = round(min(after) - fault_at, 2) if after else None
        return out
