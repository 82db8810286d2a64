"""The shared rate limiter's added latency per request: ``SharedRateLimiter.acquire`` (leases from the state
store, serve_app/ingress/shared_limits.py) against the per-replica buckets every replica had before
(``RateLimiter``), on SQLite (the default store) and a real PostgreSQL on loopback, in one run.

Each arm admits a stream of requests of one key whose rate is never exceeded (the clock advances one request's
worth between requests, so every request is admitted and the leases are taken at the rate's pace): the cost is
the per-request work plus one store round trip per lease (a lease is 2 s of the key's rate), amortized. A
lease's own round trip is reported too. PostgreSQL is started like the tests start it (tests/postgres.py), or
given with ``--pg-url``.

    python -m benchmarks.limiter [--requests 20000] [--pg-url postgresql://...]

Writes benchmarks/results/limiter.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from serve_app.ingress.limits import RateLimiter, digest
from serve_app.ingress.shared_limits import SharedRateLimiter
from serve_app.protocol.keys import KeyEntry
from serve_app.state import buckets, store

RESULTS = Path(__file__).parent / "results" / "limiter.json"
RATES = (600, 6000, 60000)  # requests per minute: a lease every 20, 200, 2000 requests


class _LocalAtClock:
    """The per-replica buckets on the benchmark's clock (``RateLimiter.acquire`` reads the monotonic one)."""

    def __init__(self, clock: list[float]):
        self.limiter, self.clock = RateLimiter(), clock

    async def acquire(self, key: KeyEntry, requests: int = 0, tokens: int = 0):
        return self.limiter.admit(key, requests, tokens, now=self.clock[0])


def _key(rpm: float) -> KeyEntry:
    return KeyEntry(name="bench", sha256=digest(secrets.token_hex(8)), requests_per_minute=rpm)


async def _per_request(limiter, rpm: float, requests: int, clock: list[float]) -> dict:
    key = _key(rpm)
    times = []
    for _ in range(requests):
        clock[0] += 60.0 / rpm
        t = time.perf_counter()
        kind, _ = await limiter.acquire(key, requests=1)
        times.append(time.perf_counter() - t)
        assert kind is None, "the benchmark's rate must be admitted"
    times.sort()
    return {"mean_us": round(statistics.fmean(times) * 1e6, 1), "p50_us": round(times[len(times) // 2] * 1e6, 1),
            "p99_us": round(times[int(len(times) * 0.99)] * 1e6, 1)}


def _lease(engine, rounds: int = 300) -> dict:
    times = []
    for i in range(rounds):
        t = time.perf_counter()
        buckets.take(engine, "lease-bench", "requests", 1e9, 1, 1, 1000.0 + i)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"p50_ms": round(times[len(times) // 2] * 1e3, 3), "p99_ms": round(times[int(len(times) * 0.99)] * 1e3, 3)}


def run(requests: int, pg_url: str | None) -> dict:
    report: dict = {"machine": platform.platform(), "requests_per_arm": requests, "arms": {}}
    pg = None
    try:
        urls = {"sqlite": f"sqlite:///{tempfile.mkdtemp(prefix='limiter-bench-')}/state.sqlite"}
        if pg_url is None:
            from tests.postgres import Postgres

            pg = Postgres().start()
            pg_url = pg.url
        urls["postgresql"] = pg_url
        clock = [time.time()]
        for rpm in RATES:
            local = asyncio.run(_per_request(_LocalAtClock(clock), rpm, requests, clock))
            report["arms"].setdefault("per_replica_buckets", {})[str(rpm)] = local
        for name, url in urls.items():
            engine = store.open_store(url)
            try:
                arm = report["arms"].setdefault(name, {"lease": _lease(engine)})
                for rpm in RATES:
                    limiter = SharedRateLimiter(lambda *a, e=engine: buckets.take(e, *a), lambda: clock[0])
                    arm[str(rpm)] = asyncio.run(_per_request(limiter, rpm, requests, clock))
                    arm[str(rpm)]["added_us_vs_per_replica"] = round(
                        arm[str(rpm)]["mean_us"] - report["arms"]["per_replica_buckets"][str(rpm)]["mean_us"], 1)
            finally:
                engine.dispose()
    finally:
        if pg is not None:
            pg.stop()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--pg-url", default=None)
    ns = ap.parse_args()
    report = run(ns.requests, ns.pg_url)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
