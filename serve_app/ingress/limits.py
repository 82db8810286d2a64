"""API keys and per-key rate limits of the public API, and the one reading of a presented key.

Keys are never stored: the key file holds each key's SHA-256 with its name, scopes and limits (``serve-app
hash-key`` makes an entry). A presented key (``bearer``: the one parser of the ``Authorization`` header, for
API keys and the admin key alike) is hashed (``digest``: the one digest format, hex, the admin key's too) and
looked up; the lookup is over digests of equal length. Rate limits are token buckets per key: one on
requests, one on tokens (a request is charged its ``max_tokens`` or the route's default before any engine
work). A refused request gets 429 with ``Retry-After``: the seconds until the bucket holds enough again (what
the openai SDK's retry waits). Every answer to a keyed request carries OpenAI's ``x-ratelimit-*`` headers for
the key's limits.

The buckets are shared by every ingress replica and node (``SharedRateLimiter``): each replica takes leases from
the key's buckets in the state store (serve_app/state/buckets.py) and spends them locally. When the store does
not answer within ``STORE_TIMEOUT_S``, a replica limits with its own buckets (``RateLimiter``) for
``RETRY_S`` and then tries the store again: limits fail over to per replica, never open and never closed, so a
store outage neither lets a key through unlimited nor refuses every request.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.protocol.keys import KeyEntry


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of ``Authorization: Bearer <key>`` among a request's raw headers (the ASGI scope's, or
    ``request.headers.raw``), or None: no such header, another scheme, or no key."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def digest(key: str) -> str:
    """SHA-256 of a key, hex: what the key file stores, and what a presented key is compared as."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyFile(BaseModel):
    """The key file. Its schema grows by optional fields whose default is the behaviour before them (as
    ``models``), so an older file keeps its meaning; ``version`` changes only when a field's meaning does, and a
    file of a newer version than this code knows is refused rather than half understood."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(1, description="Schema version of the key file.")
    keys: list[KeyEntry] = Field(..., min_length=1)


def load_keys(path: str | Path) -> dict[str, KeyEntry]:
    """sha256 → entry. Raises ValueError naming the problem."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
        entries = KeyFile.model_validate(raw).keys
    except OSError as exc:
        raise ValueError(f"cannot read the API key file {path}: {exc.strerror}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"invalid API key file {path}: {exc}"[:1000]) from None
    out: dict[str, KeyEntry] = {}
    for e in entries:
        if e.sha256 in out:
            raise ValueError(f"invalid API key file {path}: two entries have the same key ({out[e.sha256].name}, {e.name})")
        out[e.sha256] = e
    return out


@dataclass
class TokenBucket:
    """``rate_per_minute`` refills continuously up to one minute's worth (the burst)."""

    rate_per_minute: float
    level: float = field(default=-1.0)
    stamp: float | None = None  # time of the last refill; the first use starts the clock

    def __post_init__(self) -> None:
        if self.level < 0:
            self.level = self.rate_per_minute

    def _refill(self, now: float) -> None:
        if self.stamp is not None:
            elapsed = max(0.0, now - self.stamp)
            self.level = min(self.rate_per_minute, self.level + elapsed * self.rate_per_minute / 60.0)
        self.stamp = now

    def wait_s(self, amount: float, now: float | None = None) -> float:
        """0 when ``amount`` is available now, else the seconds until it will be (inf if it never fits)."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        if amount <= self.level:
            return 0.0
        if amount > self.rate_per_minute:
            return math.inf
        return (amount - self.level) * 60.0 / self.rate_per_minute

    def take(self, amount: float) -> None:
        self.level -= amount

    def reset_s(self, now: float | None = None) -> float:
        """Seconds until the bucket is full again."""
        self._refill(time.monotonic() if now is None else now)
        return (self.rate_per_minute - self.level) * 60.0 / self.rate_per_minute


class RateLimiter:
    """Token buckets of this process only (the fallback of ``SharedRateLimiter``, and what a context without a
    store uses)."""

    def __init__(self):
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def bucket(self, key: KeyEntry, kind: str, rate: float) -> TokenBucket:
        """The key's bucket of ``kind`` ("requests" or "tokens"), refilling at ``rate`` per minute."""
        b = self._buckets.get((key.sha256, kind))
        if b is None or b.rate_per_minute != rate:
            b = self._buckets[(key.sha256, kind)] = TokenBucket(rate)
        return b

    def admit(self, key: KeyEntry, requests: int = 0, tokens: int = 0, now: float | None = None) -> tuple[str | None, float]:
        """Charge ``requests`` to the key's request bucket and ``tokens`` to its token bucket when both fit
        and return (None, 0); else return (the limit that does not fit, seconds to wait) and charge nothing."""
        checks = []
        if key.requests_per_minute and requests > 0:
            checks.append(("requests", self.bucket(key, "requests", key.requests_per_minute), float(requests)))
        if key.tokens_per_minute and tokens > 0:
            checks.append(("tokens", self.bucket(key, "tokens", key.tokens_per_minute), float(tokens)))
        for kind, bucket, amount in checks:
            wait = bucket.wait_s(amount, now)
            if wait > 0:
                return kind, wait
        for _, bucket, amount in checks:
            bucket.take(amount)
        return None, 0.0

    async def acquire(self, key: KeyEntry, requests: int = 0, tokens: int = 0) -> tuple[str | None, float]:
        return self.admit(key, requests, tokens)

    def headers(self, key: KeyEntry) -> list[tuple[bytes, bytes]]:
        return limit_headers(self, key)


def _duration(seconds: float) -> str:
    """A duration the way OpenAI writes its x-ratelimit-reset-* headers: "250ms", "12s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def rate_headers(kind: str, rate: float, remaining: float, reset_s: float) -> list[tuple[bytes, bytes]]:
    """OpenAI's three headers of one limit (x-ratelimit-limit-*, -remaining-*, -reset-*)."""
    return [(f"x-ratelimit-limit-{kind}".encode(), str(math.floor(rate)).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, math.floor(remaining))).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), _duration(reset_s).encode())]


def limit_headers(limiter: RateLimiter, key: KeyEntry, now: float | None = None) -> list[tuple[bytes, bytes]]:
    """OpenAI's rate-limit headers for ``key``'s buckets (the requests ones and the tokens ones, for each limit
    the key has), as the bucket stands now."""
    headers = []
    for kind, rate in (("requests", key.requests_per_minute), ("tokens", key.tokens_per_minute)):
        if not rate:
            continue
        bucket = limiter.bucket(key, kind, rate)
        headers += rate_headers(kind, rate, bucket.level, bucket.reset_s(now))
    return headers


async def charge_tokens(request, tokens: int, param: str = "max_tokens") -> None:
    """Charge a generating request's tokens to its API key (no key, no limit). Raises RateLimited (429) when
    the key's token bucket is short, InvalidRequest when the request alone exceeds the key's minute."""
    from serve_app.errors import InvalidRequest, RateLimited
    from serve_app.observability.metrics import metric

    entry = getattr(request.state, "api_key", None)
    if entry is None:
        return
    limiter = request.app.state.context.limiter
    kind, wait = await limiter.acquire(entry, tokens=tokens)
    if kind is None:
        return
    if math.isinf(wait):
        raise InvalidRequest(f"this request may use {tokens} tokens, more than this API key's limit of "
                             f"{entry.tokens_per_minute:g} tokens per minute", param)
    metric("serve_app_rate_limited_requests").inc(tags={"limit": kind})
    raise RateLimited(f"token rate limit of this API key reached ({entry.tokens_per_minute:g} tokens per minute); "
                      "retry later", wait)
