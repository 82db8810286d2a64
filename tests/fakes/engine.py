"""An engine that starts, serves its first health checks, then reports itself unhealthy: the fault "a
release starts but fails its health check", which the real engine cannot be made to produce on demand.
It implements serve_app.llm.engine.LLMEngine and is selected by a release through ``engine.factory``."""

from __future__ import annotations

import time

from serve_app.errors import EngineError
from serve_app.llm.engine import LLMEngine

# Well inside the release watch of the test config (tests/conftest.py: releases.watch_s 2, a probe a second),
# which must see two failed probes in a row.
HEALTHY_FOR_S = 1.0


class TurnsUnhealthyEngine(LLMEngine):
    def __init__(self, name: str):
        self.name = name
        self.started = 0.0

    async def start(self) -> None:
        self.started = time.monotonic()

    async def chat(self, request):
        raise EngineError("fault injection: this engine cannot generate", 503)

    async def completion(self, request):
        raise EngineError("fault injection: this engine cannot generate", 503)

    async def models(self):
        return {"object": "list", "data": [{"id": self.name, "object": "model"}]}

    async def check_health(self) -> None:
        if time.monotonic() - self.started > HEALTHY_FOR_S:
            raise RuntimeError("fault injection: the engine became unhealthy")

    def running_requests(self) -> int:
        return 0

    def shutdown(self) -> None:
        pass


def turns_unhealthy(settings) -> LLMEngine:
    return TurnsUnhealthyEngine(settings.model.name)
