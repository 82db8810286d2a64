"""Waiting for something to happen, the one way the suite does it: poll a check, bounded, instead of sleeping
a fixed time (tests/README.md, "The budget") — the app healthy again, a replica replaced, a metric exported,
a log line written.

``wait_until(check, timeout_s, interval_s=..., what=...)`` calls ``check`` every ``interval_s`` until its
value satisfies ``until`` (default: the value is truthy) and returns that value; its last look is taken at
the deadline. Exceptions of the types in ``ignore`` count as "not yet" (e.g. a connection
refused while a server starts); any other exception ends the wait at once, as it would have ended the test.
Past ``timeout_s`` it raises ``WaitTimeout`` (an AssertionError: a test fails, a fixture errors) saying what
was awaited and the check's last value or exception; ``WaitTimeout.last`` holds that value for a caller
that reports more, or goes on regardless.

``wait_healthy`` is the wait most tests share: the session app's /healthz answering 200.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

# How much of the last value a timeout message shows.
_SHOWN_CHARS = 4000


class WaitTimeout(AssertionError):
    """What a ``wait_until`` waited for did not happen in time. ``last`` is the check's last value, or the
    exception (of an ignored type) it raised last."""

    def __init__(self, message: str, last: Any):
        super().__init__(message)
        self.last = last


def wait_until(check: Callable[[], T], timeout_s: float, *, interval_s: float = 0.5, what: str = "the condition",
               until: Callable[[T], object] = bool, ignore: tuple[type[BaseException], ...] = ()) -> T:
    """``check()``'s first value for which ``until(value)`` is true, polled every ``interval_s`` for at most
    ``timeout_s``; ``WaitTimeout`` past that (``what`` names the condition in its message)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except ignore as exc:
            last: Any = exc
        else:
            if until(value):
                return value
            last = value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            shown = repr(last)
            if len(shown) > _SHOWN_CHARS:
                shown = shown[:_SHOWN_CHARS] + "…"
            raise WaitTimeout(f"{what}: not within {timeout_s:g}s (last: {shown})", last)
        time.sleep(min(interval_s, remaining))


def wait_healthy(http: httpx.Client, timeout_s: float = 300, interval_s: float = 0.5) -> dict:
    """The app's /healthz answer once it is 200 (each look bounded at 10 s; one that fails is looked again)."""
    def look() -> tuple[int, Any]:
        r = http.get("/healthz", timeout=10)
        return r.status_code, r.json() if r.status_code == 200 else r.text[:1000]

    _, health = wait_until(look, timeout_s, interval_s=interval_s, until=lambda answer: answer[0] == 200,
                           what="the app healthy (/healthz 200)", ignore=(httpx.HTTPError,))
    return health
