"""Failing fast while the LLM has no healthy replica.

When every LLM replica is gone and none can be placed (its node lost, its GPUs taken), Serve keeps
requests waiting for a replica; a client would see nothing until the request deadline. The ingress probes
the LLM deployment in the background instead and, once no replica has answered for ``fail_fast_after_s``,
answers LLM requests at once with 503 and Retry-After. The first successful probe lifts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from serve_app.errors import ServiceUnavailable

logger = logging.getLogger("ray.serve")


class Availability:
    def __init__(self, probe: Callable[[], Awaitable], period_s: float, timeout_s: float,
                 fail_fast_after_s: float | None, clock: Callable[[], float] = time.monotonic):
        self._probe, self.period_s, self.timeout_s = probe, period_s, timeout_s
        self.fail_fast_after_s, self._clock = fail_fast_after_s, clock
        self.down_since: float | None = None
        self._task: asyncio.Task | None = None

    def check(self) -> None:
        """Raise ServiceUnavailable while the LLM has been unreachable for too long; start probing on first use."""
        if self.fail_fast_after_s is None:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        since = self.down_since
        if since is not None and self._clock() - since >= self.fail_fast_after_s:
            raise ServiceUnavailable(f"the model has had no healthy replica for {self._clock() - since:.0f}s; retry later")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._probe(), self.timeout_s)
                if self.down_since is not None:
                    logger.warning("the LLM answers again")
                self.down_since = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure counts as unavailable
                if self.down_since is None:
                    logger.warning("the LLM did not answer its health probe: %s", type(exc).__name__)
                    self.down_since = self._clock()
            await asyncio.sleep(self.period_s)

    def mark_up(self) -> None:
        """Another probe (e.g. /healthz) reached a healthy LLM replica: lift the refusal at once."""
        self.down_since = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
