"""Failing fast while a model has no healthy replica.

When every replica of a model is gone and none can be placed (its node lost, its GPUs taken), Serve keeps
requests waiting for a replica; a client would see nothing until the request deadline. The Ingress replica's
health monitor (serve_app/ingress/health_monitor.py) probes every model in the background anyway; each of its
records about a model is handed to that model's ``Availability``. Once no probe has reached a replica for
``fail_fast_after_s``, the model's requests are answered at once with 503 and Retry-After; the first
successful probe lifts it. There is one probing loop per component, the monitor's: this object only keeps
the verdict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from serve_app.errors import ServiceUnavailable

logger = logging.getLogger("ray.serve")


class Availability:
    def __init__(self, fail_fast_after_s: float | None, clock: Callable[[], float] = time.monotonic):
        """``fail_fast_after_s``: how long the model may go unanswered before its requests are refused
        (None: never refuse; requests wait for a replica up to their deadline)."""
        self.fail_fast_after_s, self._clock = fail_fast_after_s, clock
        self.down_since: float | None = None

    def record(self, ok: bool) -> None:
        """One health probe's outcome (the monitor's record of the model)."""
        if ok:
            if self.down_since is not None:
                logger.warning("the model answers its health probe again")
            self.down_since = None
        elif self.down_since is None:
            logger.warning("the model did not answer its health probe")
            self.down_since = self._clock()

    def check(self) -> None:
        """Raise ServiceUnavailable while the model has been unreachable for too long."""
        since = self.down_since
        if self.fail_fast_after_s is None or since is None:
            return
        down_s = self._clock() - since
        if down_s >= self.fail_fast_after_s:
            raise ServiceUnavailable(f"the model has had no healthy replica for {down_s:.0f}s; retry later")
