"""The app's one retry policy, run by tenacity: how many attempts, the backoff between them (doubling from a
first delay, capped, optionally jittered) and which failures are retried.

Two callers, one policy: ``open_call`` (calls/handles.py) retries the start of a streaming call whose replica
died before its first item, and the batch-ingest job (jobs/ingest.py) retries a batch unless the deployment
refused it. What one attempt does (opening a stream and cancelling it when it fails, sending a batch) stays a
function of its caller; the policy decides only whether and when that function runs again. Tenacity runs the
loop (its ``stop``, ``wait``, ``retry`` and ``before_sleep``), and its ``sleep`` is injectable, so tests run
the policy without waiting."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.wait import wait_base

T = TypeVar("T")

# Told before each retry: the attempt that failed (1-based), its exception, the seconds until the next one.
OnRetry = Callable[[int, BaseException, float], None]


def _never(_: BaseException) -> bool:
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before retry n a backoff of ``backoff_s * 2**(n-1)`` seconds, at most
    ``max_backoff_s``. With ``jitter``, "equal jitter": half that backoff fixed, half random, so that callers
    that failed together (every request on a replica that died) do not all come back at the same instant, and
    none comes back at once. A failure is retried when it is one of ``retry_on`` and ``give_up`` does not call
    it final; any other failure, and the last attempt's, is raised as it is."""

    attempts: int
    backoff_s: float
    max_backoff_s: float = math.inf
    jitter: bool = False
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up: Callable[[BaseException], bool] = _never

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_on) and not self.give_up(exc)

    def wait(self) -> wait_base:
        if not self.jitter:
            return wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)
        # The fixed half plus a random draw from [0, the other half]: tenacity's "full jitter" of half the backoff.
        half_s, half_max_s = self.backoff_s / 2, self.max_backoff_s / 2
        return (wait_exponential(multiplier=half_s, max=half_max_s)
                + wait_random_exponential(multiplier=half_s, max=half_max_s))

    def run(self, attempt: Callable[[], T], on_retry: OnRetry | None = None,
            sleep: Callable[[float], None] = time.sleep) -> T:
        """``attempt()`` until it returns, under this policy."""
        return Retrying(sleep=sleep, **self._tenacity(on_retry))(attempt)

    async def run_async(self, attempt: Callable[[], Awaitable[T]], on_retry: OnRetry | None = None,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> T:
        """``await attempt()`` until it returns, under this policy. A cancellation is not retried (unless
        ``retry_on`` names it): in an attempt or in the sleep between two, it ends the loop."""

        async def once() -> T:
            # A coroutine function: tenacity awaits what it calls only when it can tell it is one, which a
            # lambda returning a coroutine is not.
            return await attempt()

        return await AsyncRetrying(sleep=sleep, **self._tenacity(on_retry))(once)

    def _tenacity(self, on_retry: OnRetry | None) -> dict[str, Any]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            if on_retry is not None and exc is not None:
                on_retry(state.attempt_number, exc, state.upcoming_sleep)

        # reraise: the last attempt's own exception, not tenacity's RetryError around it.
        return {"stop": stop_after_attempt(self.attempts), "wait": self.wait(), "before_sleep": before_sleep,
                "retry": retry_if_exception(self.retries), "reraise": True}
