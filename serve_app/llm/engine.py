"""The engine interface and its vLLM implementation.

The vLLM engine is built exactly the way `vllm serve` builds its own: the settings are turned into
`vllm serve` arguments, parsed and validated by vLLM's parser, and the OpenAI serving objects (chat,
completions, models) are created by vLLM's ``init_app_state``. Chat templating, request parsing,
sampling-parameter mapping, structured outputs and the SSE wire format are therefore vLLM's, and a bare
`vllm serve` started with the same arguments is a like-for-like baseline.
"""

from __future__ import annotations

import abc
import logging
import logging.handlers
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NoReturn

from serve_app.errors import EngineError, InvalidRequest, NotFound, ServiceUnavailable, error_body
from serve_app.llm.errors import from_vllm
from serve_app.protocol.stream import DONE, ErrorEvent, OutcomeChunk, sse

if TYPE_CHECKING:
    from starlette.datastructures import State
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

# What an engine call returns: a complete JSON body, or an async generator of SSE lines ("data: ...\n\n"), typed
# where their kind matters (serve_app/protocol/stream.py).
EngineResult = dict[str, Any] | AsyncGenerator[str, None]


class LLMEngine(abc.ABC):
    """What the LLM deployment needs from an engine. A fault-injection fake implements the same methods."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def chat(self, request: Any) -> EngineResult:
        """Run a ChatCompletionRequest. Raises EngineError for an error the engine reports before answering.
        A stream types the lines the ingress reads its outcome from (serve_app/protocol/stream.py): an error
        event is an ``ErrorEvent``, a chunk that ends a choice or carries the usage an ``OutcomeChunk``."""

    @abc.abstractmethod
    async def completion(self, request: Any) -> EngineResult:
        """Run a CompletionRequest; as ``chat``."""

    @abc.abstractmethod
    async def models(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise when the engine cannot serve."""

    @abc.abstractmethod
    def running_requests(self) -> int:
        """Requests the engine holds (queued or generating): drops when a request finishes or is aborted."""

    @abc.abstractmethod
    def shutdown(self) -> None: ...

    def dead(self) -> bool:
        """True once the engine can never serve again (its process died); the replica then ends itself."""
        return False

    async def tokenize(self, request: Any) -> dict[str, Any]:
        """Run a vLLM TokenizeRequest (a prompt, or chat messages through the model's chat template)."""
        raise NotFound("this model's engine has no tokenizer endpoint")

    async def detokenize(self, request: Any) -> dict[str, Any]:
        """Run a vLLM DetokenizeRequest (token ids back to text)."""
        raise NotFound("this model's engine has no tokenizer endpoint")

    # LoRA adapters (serve_app/llm/adapters.py checks a folder before any of these sees it). An engine without
    # LoRA support serves none.

    def has_adapter(self, name: str) -> bool:
        return False

    async def load_adapter(self, name: str, path: str) -> None:
        """Make the adapter servable under ``name`` (requests naming it as their model use it)."""
        raise InvalidRequest("this model's engine serves no LoRA adapters", "model")

    async def unload_adapter(self, name: str) -> None:  # noqa: B027 - not abstract: no LoRA, nothing to let go
        """Requests can no longer name it; the engine's own cache lets its weights go."""

    async def try_adapter(self, path: str) -> None:
        """Load the adapter into the engine and take it out again: raises InvalidRequest when it does not load."""
        raise InvalidRequest("this model's engine serves no LoRA adapters", "model")


# vLLM serializes its chunk objects inside its stream generators (``chat_completion_stream_generator``,
# ``completion_stream_generator``), which hand over finished "data: ..." lines: the kind of a chunk is told
# here, once, by its text. vLLM writes compact JSON (``model_dump_json``): a choice's finish reason is a string
# only on its last chunk (``null`` before), and ``usage`` an object only on the chunks that carry the usage.
_FINISHED = '"finish_reason":"'
_USAGE = '"usage":{'


async def typed_stream(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """vLLM's stream with its outcome chunks typed (``OutcomeChunk``), and its in-stream error, which
    ``raise_stream_errors`` makes vLLM raise, as an ``ErrorEvent`` followed by [DONE]
    (serve_app/protocol/stream.py). Every other line passes as it is."""
    try:
        async for line in lines:
            yield OutcomeChunk(line) if _FINISHED in line or _USAGE in line else line
    except EngineError as exc:
        yield ErrorEvent(sse(error_body(exc.status, exc.message, exc.param, exc.code)))
        yield DONE


def _typed(result: EngineResult) -> EngineResult:
    """A chat or completion answer: a whole body as it is, a stream typed."""
    return result if isinstance(result, dict) else typed_stream(result)


def _whole(result: EngineResult) -> dict[str, Any]:
    """The body of an answer vLLM never streams (tokenize, detokenize)."""
    if not isinstance(result, dict):
        raise TypeError("vLLM answered a call that never streams with a stream")
    return result


def stream_error(message: str | Exception, err_type: str = "BadRequestError", status_code: int = 400,
                 param: str | None = None) -> NoReturn:
    """vLLM's ``create_streaming_error_response`` made to raise: the error a stream generator of vLLM reports
    in-band, in vLLM's own mapping (status, sanitized message), as the app's EngineError. vLLM calls it
    from the generator's exception handlers only; what it raises ends vLLM's stream, and ``typed_stream`` writes
    the event and the [DONE] that vLLM would have written. A server error's detail stays in the log."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    err = create_error_response(message, err_type, HTTPStatus(status_code), param).error
    status = int(err.code)
    if status >= 500:
        logger.error("engine error in a stream: %s", err.message)
        raise EngineError("the model engine failed to process the request", status)
    raise EngineError(err.message, status, err.param)


def raise_stream_errors(serving: Any) -> None:
    """Make a vLLM serving object (chat, completions) raise its in-stream errors (``stream_error``) instead of
    writing them into the stream as JSON: the engine gets the error as an object, not as text to recognise.
    Set on the instance: vLLM builds these objects itself (``init_app_state``), so no subclass can stand in.
    Removed when vLLM's stream generators hand over their items as objects."""
    serving.create_streaming_error_response = stream_error


def vllm_serve_args(cli_args: list[str]):
    """Parse `vllm serve` arguments with vLLM's own parser and validation."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="serve-app-engine"))
    args = parser.parse_args(cli_args)
    validate_parsed_serve_args(args)
    return args


@contextmanager
def serve_log_kept() -> Iterator[None]:
    """Keep the replica's Serve log open while an engine starts.

    vLLM applies its logging config when an engine starts (``logging.config.dictConfig``), and dictConfig first
    closes every handler of the process: the replica's log file (Serve's MemoryHandler over it) would end there,
    and Serve's controller, when it restarts and recovers the replicas, fails on the closed handler and stops the
    replica. The handlers' targets are put back (a closed file handler reopens on its next record)."""
    kept = [(h, h.target) for h in logging.getLogger("ray.serve").handlers
            if isinstance(h, logging.handlers.MemoryHandler)]
    try:
        yield
    finally:
        for handler, target in kept:
            if handler.target is None:
                handler.setTarget(target)


class VLLMEngine(LLMEngine):
    """vLLM's AsyncLLM plus vLLM's OpenAI serving layer, in this process."""

    def __init__(self, cli_args: list[str], env: dict[str, str] | None = None):
        self._cli_args = list(cli_args)
        self._env = dict(env or {})
        self._engine: AsyncLLM | None = None
        self._state: State | None = None

    async def start(self) -> None:
        with serve_log_kept():
            await self._start()

    async def _start(self) -> None:
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # The engine-core subprocess inherits the environment: set what it reads before it starts.
        os.environ.update(self._env)
        args = vllm_serve_args(self._cli_args)
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        import ray

        stat_loggers = None
        if ray.is_initialized():
            # vLLM's own metrics (TTFT, TPOT, tokens, queue, KV cache) through Ray's metrics agent, next to
            # Serve's and the app's (the default logger would keep them in this process's registry).
            from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

            stat_loggers = [RayPrometheusStatLogger]
        from serve_app.llm.cpus import engine_cpus_reachable

        # The engine's processes start here and inherit this thread's CPU mask.
        with engine_cpus_reachable():
            self._engine = AsyncLLM.from_vllm_config(
                vllm_config=vllm_config,
                usage_context=UsageContext.OPENAI_API_SERVER,
                stat_loggers=stat_loggers,
                enable_log_requests=engine_args.enable_log_requests,
                disable_log_stats=engine_args.disable_log_stats,
            )
        state = State()
        await init_app_state(self._engine, state, args, await self._engine.get_supported_tasks())
        for serving in (state.openai_serving_chat, state.openai_serving_completion):
            if serving is not None:  # None: a model without text generation
                raise_stream_errors(serving)
        self._state = state

    @property
    def _llm(self) -> AsyncLLM:
        if self._engine is None:
            raise RuntimeError("engine not started")
        return self._engine

    @property
    def _serving(self) -> State:
        """vLLM's serving objects (``init_app_state``), by the names vLLM's own server keeps them under."""
        if self._state is None:
            raise RuntimeError("engine not started")
        return self._state

    @staticmethod
    def _unwrap(result: Any) -> EngineResult:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if isinstance(result, ErrorResponse):
            raise EngineError(result.error.message, int(result.error.code), result.error.param)
        if hasattr(result, "model_dump"):
            return result.model_dump(mode="json", exclude_unset=False)
        return result

    async def _call(self, coro) -> EngineResult:
        try:
            return self._unwrap(await coro)
        except EngineError:
            raise
        except Exception as exc:
            # vLLM's serving layer raises its validation errors (e.g. max_tokens over the context) instead
            # of returning them; map them the way vLLM's own server does, into an exception that pickles.
            mapped = from_vllm(exc)
            if mapped is None:
                raise
            if isinstance(mapped, EngineError) and mapped.status >= 500:
                logger.exception("engine error")
            raise mapped from None

    async def chat(self, request: Any) -> EngineResult:
        return _typed(await self._call(self._serving.openai_serving_chat.create_chat_completion(request, None)))

    async def completion(self, request: Any) -> EngineResult:
        return _typed(await self._call(self._serving.openai_serving_completion.create_completion(request, None)))

    async def tokenize(self, request: Any) -> dict[str, Any]:
        return _whole(await self._call(self._serving.serving_tokenization.create_tokenize(request, None)))

    async def detokenize(self, request: Any) -> dict[str, Any]:
        return _whole(await self._call(self._serving.serving_tokenization.create_detokenize(request, None)))

    async def models(self) -> dict[str, Any]:
        listing = await self._serving.openai_serving_models.show_available_models()
        return listing.model_dump(mode="json")

    async def check_health(self) -> None:
        if self._engine is None:
            raise RuntimeError("engine not started")
        await self._engine.check_health()

    def running_requests(self) -> int:
        return self._engine.get_num_unfinished_requests() if self._engine is not None else 0

    def has_adapter(self, name: str) -> bool:
        return name in self._serving.openai_serving_models.lora_requests

    async def load_adapter(self, name: str, path: str) -> None:
        # vLLM's own dynamic loading (what its /v1/load_lora_adapter does): the adapter joins the name -> LoRA
        # request table its chat and completion layers look a request's model up in.
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        result = await self._serving.openai_serving_models.load_lora_adapter(
            LoadLoRAAdapterRequest(lora_name=name, lora_path=path))
        if isinstance(result, ErrorResponse):
            logger.error("loading adapter %s from %s failed: %s", name, path, result.error.message)
            raise ServiceUnavailable(f"the adapter {name!r} could not be loaded on this replica")

    async def unload_adapter(self, name: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        if self.has_adapter(name):
            await self._serving.openai_serving_models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))

    async def try_adapter(self, path: str) -> None:
        import uuid

        from vllm.lora.request import LoRARequest

        models = self._serving.openai_serving_models
        request = LoRARequest(lora_name=f"trial-{uuid.uuid4().hex[:8]}", lora_int_id=models.lora_id_counter.inc(1),
                              lora_path=path)
        try:
            await self._llm.add_lora(request)
        except Exception as exc:  # noqa: BLE001 - whatever the engine says, the adapter does not load
            logger.warning("trial load of %s failed: %s", path, exc)
            reason = str(exc).replace(path, "<adapter>")[:300]
            raise InvalidRequest(f"the adapter does not load into this model: {reason}", "path") from None
        await self._llm.remove_lora(request.lora_int_id)

    def dead(self) -> bool:
        return self._engine is not None and self._engine.errored

    def shutdown(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.shutdown()
