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

from serve_app.config.components import LLMAppSettings
from serve_app.config.model_settings import ServedModel
from serve_app.config.names import LLM_DEPLOYMENT, LLM_ROOT, SERVED_NAMES
from serve_app.errors import InvalidRequest, ModelNotFound
from serve_app.llm import engine_args
from serve_app.llm.adapters import adapter_path, check_adapter, check_shapes, model_config
from serve_app.llm.cpus import BIND_ENV, placement_env
from serve_app.llm.engine import LLMEngine, VLLMEngine
from serve_app.llm.model import resolve_model
from serve_app.protocol.stream import head

logger = logging.getLogger("ray.serve")

EngineFactory = Callable[[ServedModel], LLMEngine]
WATCHDOG_PERIOD_S = 1.0


def vllm_engine_factory(settings: ServedModel) -> LLMEngine:
    model = resolve_model(settings.model.source, settings.model.cache_dir)
    env = {**engine_args.env(settings.engine), **placement_env(settings.engine.cpu_cores, settings.model.name)}
    return VLLMEngine(engine_args.cli_args(settings.engine, model, settings.model, settings.lora), env=env)


def _factory(path: str | None) -> EngineFactory:
    if not path:
        return vllm_engine_factory
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class HeldAdapter:
    """What Serve's multiplexing keeps per adapter a replica holds. Serve awaits an instance's own ``__del__``
    when it evicts the adapter (least recently used): set on the instance, not the class, so the garbage
    collector never calls it."""

    def __init__(self, name: str, let_go: Callable[[], Any]):
        self.name = name
        self.__del__ = let_go


@serve.deployment(name=LLM_DEPLOYMENT, max_ongoing_requests=64, health_check_period_s=10)
class LLMServer:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor; mypy allows only None
        self, settings: dict[str, Any], engine_factory: EngineFactory | None = None,
    ):
        """``settings``: its application's args (``LLMAppSettings``: the model it serves, and which LLM
        deployment it is)."""
        # Serve awaits an async constructor: the replica is routable only once the engine has started.
        self._settings = LLMAppSettings.model_validate(settings)
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
        # LoRA adapters: the catalog (name -> folder under the root; set again by ``reconfigure``) and which of
        # them this replica holds, through Serve's model multiplexing: a request naming an adapter goes to a
        # replica that holds it when one does; past ``max_per_replica`` the least recently used one is let go.
        lora = self._settings.lora
        self._catalog: dict[str, str] = dict(lora.adapters) if lora else {}
        self._hold = None
        if lora:
            async def load(name: str):  # a plain function: Serve's wrapper keeps its state on it
                return await self._load_adapter(name)

            self._hold = serve.multiplexed(max_num_models_per_replica=lora.max_per_replica)(load)
        # What an adapter's config may call its base model: the served name, the source, the default name.
        source = self._settings.model.source
        self._model_names = {self._settings.model.name, source, SERVED_NAMES.get(source, source)}
        # The adapters the replica starts with are tried now (here, or in the first ``reconfigure``, which Serve
        # calls before the replica serves): a bad one fails the start, and so the release that brought it.
        self._starting = True
        self._model_config: dict[str, Any] | None = None  # the model's config.json, read at the first check
        for folder in self._catalog.values():
            await self.trial_adapter(folder)

    @property
    def _live_engine(self) -> LLMEngine:
        """The engine, for a request: ``_engine`` is None only before it has started and after ``__del__``."""
        if self._engine is None:
            raise RuntimeError("the engine is not running")
        return self._engine

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The adapters of a release that changed only them (serve_app/config/apps.py): no restart. One that
        is gone, or now names another folder, is no longer servable here at once."""
        adapters = (user_config or {}).get("adapters")
        starting, self._starting = self._starting, False
        if adapters is None or self._hold is None:
            return
        old, self._catalog = self._catalog, dict(adapters)
        for name, folder in old.items():
            if self._catalog.get(name) != folder:
                await self._live_engine.unload_adapter(name)
        if starting:  # a running replica's new adapters were tried by the release controller already
            for name, folder in self._catalog.items():
                if old.get(name) != folder:
                    await self.trial_adapter(folder)

    def _adapter_folder(self, folder: str):
        """An adapter folder under the root, checked (serve_app/llm/adapters.py)."""
        lora = self._settings.lora
        if lora is None:
            raise InvalidRequest(f"LoRA is off for the model {self._settings.model.name!r}", "model")
        path = adapter_path(lora.root_dir(), folder)
        info = check_adapter(path, folder, self._model_names, lora.max_rank)
        if self._model_config is None:
            self._model_config = model_config(resolve_model(self._settings.model.source, self._settings.model.cache_dir))
        check_shapes(path, folder, self._model_config)
        return path, info

    async def _load_adapter(self, name: str):
        """Serve's multiplexed loader: make the adapter ``name`` of the catalog servable on this replica."""
        await self._ensure_adapter(name)
        async def let_go():
            await self._live_engine.unload_adapter(name)

        return HeldAdapter(name, let_go)

    async def _ensure_adapter(self, name: str) -> None:
        if name not in self._catalog:
            raise ModelNotFound(f"The model `{name}` does not exist.", "model")
        if not self._live_engine.has_adapter(name):  # new, or unloaded by a release while Serve still counted it held
            path, _ = self._adapter_folder(self._catalog[name])
            await self._live_engine.load_adapter(name, str(path))

    async def trial_adapter(self, folder: str) -> dict[str, Any]:
        """Check an adapter folder and load it into this replica's engine once (then out again): what the release
        controller does before a release with a new adapter counts as good."""
        if self._hold is None:
            raise InvalidRequest(f"LoRA is off for the model {self._settings.model.name!r}: set its lora section "
                                 "(a release that restarts its engine) to serve adapters", "model")
        path, info = self._adapter_folder(folder)
        await self._live_engine.try_adapter(str(path))
        return info

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
        await self._use_adapter()
        if kind == "chat":
            result = await self._live_engine.chat(request)
        elif kind == "completion":
            result = await self._live_engine.completion(request)
        else:
            raise ValueError(f"unknown request kind {kind!r}")
        if isinstance(result, dict):
            yield head(False, self._replica, result)
            return
        yield head(True, self._replica)
        async for line in result:
            yield line

    async def _use_adapter(self) -> None:
        """The request's adapter (Serve's multiplexed model id; none for the base model) held and servable."""
        adapter = serve.get_multiplexed_model_id()
        if adapter:
            if self._hold is None:
                raise ModelNotFound(f"The model `{adapter}` does not exist.", "model")
            await self._hold(adapter)
            await self._ensure_adapter(adapter)

    async def tokens(self, kind: str, request: Any) -> dict[str, Any]:
        """vLLM's /tokenize (``kind`` "tokenize": a prompt or chat messages, rendered by the model's chat
        template, to token ids) or /detokenize (token ids to text)."""
        await self._use_adapter()
        if kind == "tokenize":
            return await self._live_engine.tokenize(request)
        if kind == "detokenize":
            return await self._live_engine.detokenize(request)
        raise ValueError(f"unknown request kind {kind!r}")

    async def models(self) -> dict[str, Any]:
        return await self._live_engine.models()

    async def health(self) -> dict[str, Any]:
        """Health detail for /healthz. Raises when the engine cannot serve."""
        await self._live_engine.check_health()
        return {
            "model": self._settings.model.name,
            "cpus": os.environ.get(BIND_ENV, "auto"),
            "started_at": self._started_at,
            "engine_start_s": round(self._start_s, 1),
            "replica": self._replica,
            "pid": os.getpid(),
            "running_requests": self._live_engine.running_requests(),
            **({"adapters": {"configured": len(self._catalog),
                             "held": sorted(n for n in self._catalog if self._live_engine.has_adapter(n))}}
               if self._hold is not None else {}),
        }

    async def check_health(self) -> None:
        # Called by Serve's controller; raising marks the replica unhealthy and Serve replaces it.
        await self._live_engine.check_health()

    def __del__(self):
        # Serve calls __del__ on graceful replica shutdown: stop the engine-core process with it.
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:
                logger.exception("engine shutdown failed")


@serve.deployment(name=LLM_ROOT, ray_actor_options={"num_cpus": 0},
                  autoscaling_config={"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1})
class LLMRoot:
    """The root of an LLM application, holding its LLM deployment as a child. Serve makes an application's root
    its ingress and, with HAProxy in front (``serve-app run``'s default), refuses a custom request router on an
    ingress deployment, even one without an HTTP route: the LLM deployment's own router (serve_app/llm/router.py)
    needs it to be a child. Nothing calls the root (the ingress and the agent reach the LLM deployment by name),
    so it stays at zero replicas and costs nothing."""

    def __init__(self, llm):
        self._llm = llm
