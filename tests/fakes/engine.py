"""Engines for faults and observations the real engine cannot produce on demand, each implementing
serve_app.llm.engine.LLMEngine and selected by a release through ``engine.factory`` (registered in the test
config's ``releases.engine_factories``): one that starts, serves its first health checks, then reports itself
unhealthy (the fault "a release starts but fails its health check"); one that answers with the prompt it was
asked to render (what a replica was sent, byte for byte)."""

from __future__ import annotations

import asyncio
import time

from serve_app.errors import EngineError
from serve_app.llm import engine_args
from serve_app.llm.engine import LLMEngine
from serve_app.protocol.stream import DONE, sse

# Well inside the release watch of the test config (tests/conftest.py: releases.watch_s 2, a probe a second),
# which must see two failed probes in a row.
HEALTHY_FOR_S = 1.0


class _FakeEngine(LLMEngine):
    """What a fake engine of one served model answers alike: its model list, no running requests, nothing to
    stop."""

    name: str

    async def models(self):
        return {"object": "list", "data": [{"id": self.name, "object": "model"}]}

    def running_requests(self) -> int:
        return 0

    def shutdown(self) -> None:
        pass


class TurnsUnhealthyEngine(_FakeEngine):
    def __init__(self, name: str):
        self.name = name
        self.started = 0.0

    async def start(self) -> None:
        self.started = time.monotonic()

    async def chat(self, request):
        raise EngineError("fault injection: this engine cannot generate", 503)

    async def completion(self, request):
        raise EngineError("fault injection: this engine cannot generate", 503)

    async def check_health(self) -> None:
        if time.monotonic() - self.started > HEALTHY_FOR_S:
            raise RuntimeError("fault injection: the engine became unhealthy")


def turns_unhealthy(settings) -> LLMEngine:
    return TurnsUnhealthyEngine(settings.model.name)


class EchoEngine(_FakeEngine):
    """An engine whose answer is the prompt its model's chat template renders from the request (the template
    vLLM would use: serve_app/llm/engine_args.py), with no model run: what reached the engine, byte for byte,
    for tests that compare what two replicas were asked (tests/release/test_replicas_routing.py)."""

    def __init__(self, settings):
        from serve_app.llm.model import resolve_model

        self.name = settings.model.name
        self.folder = resolve_model(settings.model.source, settings.model.cache_dir)
        template = engine_args.chat_template(settings.model)
        self.template = template.read_text() if template is not None else None
        self.tokenizer = None

    async def start(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.folder)

    def render(self, request) -> str:
        tools = [t.model_dump(exclude_none=True) for t in request.tools] if request.tools else None
        return self.tokenizer.apply_chat_template(request.messages, tools=tools, chat_template=self.template,
                                                  tokenize=False, add_generation_prompt=True)

    async def chat(self, request):
        prompt = self.render(request)
        usage = {"prompt_tokens": len(self.tokenizer(prompt)["input_ids"]), "completion_tokens": 1}
        usage["total_tokens"] = usage["prompt_tokens"] + 1
        message = {"role": "assistant", "content": prompt}
        if not request.stream:
            return {"id": "chatcmpl-echo", "object": "chat.completion", "created": int(time.time()), "model": self.name,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}

        async def lines():
            base = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "model": self.name}
            yield sse({**base, "choices": [{"index": 0, "delta": message, "finish_reason": None}]})
            yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            yield sse({**base, "choices": [], "usage": usage})
            yield DONE

        return lines()

    async def completion(self, request):
        raise EngineError("the echo engine answers chat requests only", 400)

    async def check_health(self) -> None:
        if self.tokenizer is None:
            raise RuntimeError("not started")


def echo(settings) -> LLMEngine:
    return EchoEngine(settings)
