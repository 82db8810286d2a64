"""Rate limits that hold across every ingress replica and node: leases from the key's buckets in the state store
(serve_app/state/buckets.py), spent locally.

A replica short of a key's requests (or tokens) takes a lease of at most ``LEASE_S`` seconds of the key's rate
(at least what the request needs) in one atomic store update, then admits from what it holds until that runs
out. Everything admitted was taken from the shared bucket first, so all replicas together admit at most the
bucket's burst and refill plus what they hold; one replica alone can take the whole bucket (there is no static
split of a limit). A replica takes one lease per key and kind at a time (its other requests wait for it), and
the store sees one write per lease, not one per request.

The store not answering within ``STORE_TIMEOUT_S`` turns the replica to its own buckets (``RateLimiter``) for
``RETRY_S``: limits fail over to per replica (ingress/limits.py says why).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from functools import partial

from sqlalchemy.exc import SQLAlchemyError

from serve_app.ingress.limits import RateLimiter, limit_headers, rate_headers
from serve_app.protocol.keys import KeyEntry

logger = logging.getLogger("ray.serve")
LEASE_S = 2.0
STORE_TIMEOUT_S = 0.5
RETRY_S = 5.0
# (key digest, kind, rate per minute, want, need, now) -> (taken, the shared level after): state/buckets.py
Take = Callable[[str, str, float, float, float, float], tuple[float, float]]


class SharedRateLimiter:
    def __init__(self, take: Take, clock: Callable[[], float] = time.time):
        """``take``: the store's lease (state/buckets.py ``take`` on an engine). ``clock``: wall-clock time,
        which every replica's leases are stamped with."""
        self._take, self._clock = take, clock
        self._held: dict[tuple[str, str], float] = {}
        # The shared level after this replica's last lease, and when it was read.
        self._seen: dict[tuple[str, str], tuple[float, float]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # When the shared bucket said it would next have enough: until then a request is refused here, so a
        # flood on an exhausted key costs the store nothing.
        self._empty_until: dict[tuple[str, str], float] = {}
        self.local = RateLimiter()
        self._down_until = 0.0

    @property
    def failed_over(self) -> bool:
        return time.monotonic() < self._down_until

    async def _hold(self, key: KeyEntry, kind: str, rate: float, amount: float) -> float:
        """0 once ``amount`` of the key's ``kind`` is held here, else the seconds until the shared bucket has it."""
        k = (key.sha256, kind)
        if amount > rate:
            return math.inf
        if self._held.get(k, 0.0) >= amount:
            return 0.0
        now = self._clock()
        if now < self._empty_until.get(k, 0.0):
            return self._empty_until[k] - now
        async with self._locks.setdefault(k, asyncio.Lock()):
            held = self._held.get(k, 0.0)
            if held >= amount:  # another request's lease, taken while this one waited
                return 0.0
            need = amount - held
            want = max(need, rate * LEASE_S / 60.0)
            now = self._clock()
            lease = asyncio.ensure_future(asyncio.to_thread(self._take, key.sha256, kind, rate, want, need, now))
            try:
                taken, level = await asyncio.wait_for(asyncio.shield(lease), STORE_TIMEOUT_S)
            except (TimeoutError, asyncio.CancelledError):
                # Past the deadline, or the client went away: the store may still grant the lease, which is then
                # held here rather than lost from the shared bucket.
                lease.add_done_callback(partial(self._late_lease, k))
                raise
            self._seen[k] = (level, now)
            if taken > 0:
                # Read again: requests admitted from what was held while this lease was out spent some.
                self._held[k] = self._held.get(k, 0.0) + taken
                return 0.0
            # Never 0 when nothing was taken (a level read after another node's newer lease may show enough).
            wait = max(1e-3, (need - level) * 60.0 / rate)
            self._empty_until[k] = now + wait
            return wait

    def _late_lease(self, k: tuple[str, str], lease: asyncio.Future) -> None:
        if not lease.cancelled() and lease.exception() is None:
            self._held[k] = self._held.get(k, 0.0) + lease.result()[0]

    async def acquire(self, key: KeyEntry, requests: int = 0, tokens: int = 0) -> tuple[str | None, float]:
        """As ``RateLimiter.admit``: charge both when both fit, else (the limit short, seconds to wait)."""
        checks = [(kind, rate, float(amount)) for kind, rate, amount in
                  (("requests", key.requests_per_minute, requests), ("tokens", key.tokens_per_minute, tokens))
                  if rate and amount > 0]
        if not checks:
            return None, 0.0
        if self.failed_over:
            return self.local.admit(key, requests, tokens)
        try:
            while True:
                for kind, rate, amount in checks:
                    wait = await self._hold(key, kind, rate, amount)
                    if wait > 0:
                        return kind, wait
                # Checked and charged with no await between: other requests may have spent what was held
                # while this one waited for its second lease; then it holds again.
                held = [((key.sha256, kind), amount) for kind, _, amount in checks]
                if all(self._held.get(k, 0.0) >= amount for k, amount in held):
                    for k, amount in held:
                        self._held[k] -= amount
                    return None, 0.0
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            from serve_app.observability.metrics import metric

            self._down_until = time.monotonic() + RETRY_S
            metric("serve_app_rate_limit_failovers").inc()
            logger.warning("the state store did not answer a rate-limit lease (%s); limiting per replica for %gs",
                           type(exc).__name__, RETRY_S)
            return self.local.admit(key, requests, tokens)

    def headers(self, key: KeyEntry) -> list[tuple[bytes, bytes]]:
        """OpenAI's x-ratelimit-* headers: what the key has left across replicas, as this replica last saw the
        shared bucket (refilled to now) plus what it holds."""
        if self.failed_over:
            return limit_headers(self.local, key)
        now = self._clock()
        out = []
        for kind, rate in (("requests", key.requests_per_minute), ("tokens", key.tokens_per_minute)):
            if not rate:
                continue
            k = (key.sha256, kind)
            level, at = self._seen.get(k, (rate, now))
            remaining = min(rate, level + max(0.0, now - at) * rate / 60.0 + self._held.get(k, 0.0))
            out += rate_headers(kind, rate, remaining, (rate - remaining) * 60.0 / rate)
        return out
