"""Component health probed in the background, so that ``GET /healthz`` answers from memory, at once.

Readiness probes have short deadlines (Kubernetes' default is 1 s). A /healthz that awaited each component's
health call answered only as fast as the slowest one: with the only LLM replica killed under load, the call
queued behind Serve's replica replacement and /healthz did not answer for many seconds, so the front door was
marked down although it could have said exactly what was wrong. Here each component has its own loop: probe
with its own deadline, record the outcome with when it was taken, wait out the period, again. /healthz reads
the records (``snapshot``) and says how old each one is.

A component that goes down is therefore reported within one period plus its probe's deadline. A record older
than that plus a grace period (its loop is stuck: should not happen, but then the state is unknown) counts as
unhealthy, as does a component not probed yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.errors import unwrap

logger = logging.getLogger("ray.serve")

Probe = Callable[[], Awaitable[dict[str, Any]]]
OnResult = Callable[[str, dict[str, Any]], None]


class HealthMonitor:
    def __init__(self, probes: dict[str, Probe], period_s: float, timeout_s: float,
                 on_result: OnResult | None = None, clock: Callable[[], float] = time.monotonic):
        """``probes``: component -> a call that returns its health detail or raises. ``on_result`` sees every
        record as it is taken (the LLM's availability gate is fed from here)."""
        self.probes, self.period_s, self.timeout_s = probes, period_s, timeout_s
        self._on_result, self._clock = on_result, clock
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task] = []
        self._first_round = asyncio.Event()

    @property
    def max_age_s(self) -> float:
        """The oldest a record may be while its loop works: a period, the probe's deadline, and a second."""
        return self.period_s + self.timeout_s + 1.0

    def first_round_done(self) -> bool:
        return self._first_round.is_set()

    def start(self) -> None:
        """Start the loops on the running event loop (once)."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._watch(name, probe), name=f"health:{name}")
                           for name, probe in self.probes.items()]

    async def first_round(self, within_s: float) -> None:
        """Wait (at most ``within_s``) until every component has a record: a replica's first /healthz."""
        self.start()
        try:
            await asyncio.wait_for(self._first_round.wait(), within_s)
        except TimeoutError:
            pass

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()

    async def probe_once(self, name: str) -> dict[str, Any]:
        try:
            detail = await asyncio.wait_for(self.probes[name](), self.timeout_s)
            return {"status": "ok", **(detail or {})}
        except TimeoutError:
            return {"status": "unhealthy", "error": f"health probe timed out after {self.timeout_s:g}s"}
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            cause = unwrap(exc)
            return {"status": "unhealthy", "error": f"{type(cause).__name__}: {cause}"[:300]}

    async def _watch(self, name: str, probe: Probe) -> None:
        while True:
            began = self._clock()
            record = await self.probe_once(name)
            self._records[name] = (self._clock(), record)
            if len(self._records) == len(self.probes):
                self._first_round.set()
            if self._on_result is not None:
                try:
                    self._on_result(name, record)
                except Exception:
                    logger.exception("health listener failed for %s", name)
            await asyncio.sleep(max(0.0, self.period_s - (self._clock() - began)))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every component's last record with its age (``age_s``); never waits."""
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for name in self.probes:
            taken = self._records.get(name)
            if taken is None:
                out[name] = {"status": "unknown", "error": "not probed yet"}
                continue
            at, record = taken
            age = now - at
            out[name] = {**record, "age_s": round(age, 2)}
            if age > self.max_age_s:
                out[name].update(status="unhealthy", error=f"last probed {age:.0f}s ago")
        return out


def public(components: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What /healthz shows a caller without the admin key when API keys are on: each component's state and
    age; no process ids, replica names, versions or exception text."""
    return {name: {k: c[k] for k in ("status", "age_s") if k in c} for name, c in components.items()}
