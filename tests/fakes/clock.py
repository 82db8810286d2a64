"""A clock that moves only when something sleeps on it: deadlines and periods of code that takes a clock and a
sleep (``time.monotonic`` and ``asyncio.sleep`` in production) are tested without waiting for them."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # still a suspension point: other tasks run, as during a real sleep
