"""The LLM Serve deployment: one vLLM engine per replica.

Every call is a streaming call (``handle.options(stream=True)``): the first item is a *head* telling the
ingress whether a complete JSON body or an SSE stream follows. Using one shape for both lets the ingress
decide the HTTP status before it sends a byte, and lets it retry a request whose replica died before the
head arrived without ever replaying a partial answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from ray import serve

from serve_app.config.parts import LLMServerSettings, deployment_settings
from serve_app.config.names import LLM_DEPLOYMENT
from serve_app.llm import engine_args
from serve_app.llm.cpus import BIND_ENV, placement_env
from serve_app.llm.engine import LLMEngine, VLLMEngine
from serve_app.llm.model import resolve_model
from serve_app.protocol.stream import head

logger = logging.getLogger("ray.serve")

EngineFactory = Callable[[LLMServerSettings], LLMEngine]
WATCHDOG_PERIOD_S = 1.0


def vllm_engine_factory(settings: LLMServerSettings) -> LLMEngine:
    model = resolve_model(settings.model.source, settings.model.cache_dir)
    env = {**engine_args.env(settings.engine), **placement_env(settings.engine.cpu_cores, settings.model.name)}
    return VLLMEngine(engine_args.cli_args(settings.engine, model, settings.model.name), env=env)


def _factory(path: str | None) -> EngineFactory:
    if not path:
        return vllm_engine_factory
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@serve.deployment(name="LLMServer", max_ongoing_requests=64, health_check_period_s=10)
class LLMServer:
    async def __init__(self, settings: dict[str, Any] | None, deployment: str = LLM_DEPLOYMENT,
                       engine_factory: EngineFactory | None = None):
        """``deployment``: which LLM deployment this is (``LLMServer``, ``LLMServer-<name>``), so which model."""
        # Serve awaits an async constructor: the replica is routable only once the engine has started.
        self._settings = deployment_settings(settings, deployment)
        self._engine: LLMEngine | None = None
        engine = (engine_factory or _factory(self._settings.engine.factory))(self._settings)
        t0 = time.monotonic()
        await engine.start()
        self._engine, self._started_at, self._start_s = engine, time.time(), time.monotonic() - t0
        # Which replica answered, for the X-Served-By response header (debugging, failure analysis).
        try:
            self._replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a Serve replica (tests)
            self._replica = None
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_engine())

    async def _watch_engine(self) -> None:
        """A replica whose engine died can never serve again; Serve would replace it only after several failed
        health checks (period × threshold, ~30 s by default), answering every request routed to it with a
        503 meanwhile. Ending the process at once makes Serve replace it now and route nothing more to it."""
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            if self._engine is not None and self._engine.dead():
                logger.error("the engine died; ending this replica so that Serve replaces it")
                # The requests it held have had their error answers (503, or an error event in their stream).
                await asyncio.sleep(WATCHDOG_PERIOD_S)
                os._exit(1)

    async def generate(self, kind: str, request: Any) -> AsyncGenerator[Any, None]:
        """Run a chat or completion request. Yields the stream head (serve_app/protocol/stream.py), then SSE
        lines when streaming."""
        if kind == "chat":
            result = await self._engine.chat(request)
        elif kind == "completion":
            result = await self._engine.completion(request)
        else:
            raise ValueError(f"unknown request kind {kind!r}")
        if isinstance(result, dict):
            yield head(False, self._replica, result)
            return
        yield head(True, self._replica)
        async for line in result:
            yield line

    async def models(self) -> dict[str, Any]:
        return await self._engine.models()

    async def health(self) -> dict[str, Any]:
        """Health detail for /healthz. Raises when the engine cannot serve."""
        await self._engine.check_health()
        return {
            "model": self._settings.model.name,
            "cpus": os.environ.get(BIND_ENV, "auto"),
            "started_at": self._started_at,
            "engine_start_s": round(self._start_s, 1),
            "replica": self._replica,
            "pid": os.getpid(),
            "running_requests": self._engine.running_requests(),
        }

    async def check_health(self) -> None:
        # Called by Serve's controller; raising marks the replica unhealthy and Serve replaces it.
        await self._engine.check_health()

    def __del__(self):
        # Serve calls __del__ on graceful replica shutdown: stop the engine-core process with it.
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - shutdown must not raise from __del__
                logger.exception("engine shutdown failed")
