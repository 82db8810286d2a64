"""Chat calls to the LLM deployment from other deployments (RAG in the ingress, the agent).

Requests are vLLM's own ``ChatCompletionRequest`` (so chat templates, sampling and structured outputs are
vLLM's) and go through ``open_call``: retried while the replica died before answering, bounded by the
ingress deadline. When the caller is cancelled (client gone, deadline), the handle call is cancelled too,
which aborts the request inside the engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from opentelemetry.trace import SpanKind

from serve_app.calls.handles import open_call
from serve_app.config.settings import IngressSettings
from serve_app.errors import EngineError, status_of
from serve_app.observability.genai import llm_call, record_response
from serve_app.observability.tracing import span
from serve_app.protocol.stream import DONE_DATA, data_of


def chat_request(body: dict[str, Any]):
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(body)


class LLMClient:
    def __init__(self, handle, model: str, settings: IngressSettings):
        self.handle, self.model, self.settings = handle, model, settings

    def _body(self, messages: list[dict[str, str]], max_tokens: int, temperature: float, **extra) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, **extra}

    def _handle(self, session: str | None):
        # A session's calls (an agent run's) go to one replica (serve_app/llm/router.py).
        return self.handle.options(session_id=session) if session else self.handle

    async def complete(
        self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0, json_schema: dict | None = None,
        usage: dict[str, Any] | None = None, session: str | None = None, **options: Any,
    ) -> str:
        """The whole answer text. With ``json_schema`` the engine constrains the output to the schema. ``usage``
        gets the answer's token counts; ``session``: calls that share it go to one replica; ``options`` are
        more of vLLM's sampling fields (``min_tokens``, ...)."""
        extra: dict[str, Any] = dict(options)
        if json_schema is not None:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": json_schema}}
        req = chat_request(self._body(messages, max_tokens, temperature, **extra))
        name, attributes = llm_call("chat", self.model, max_tokens, temperature, structured=json_schema is not None,
                                    stream=False)
        with span(name, SpanKind.CLIENT, **attributes) as s:
            head, gen = await open_call(self._handle(session).generate, ("chat", req), self.settings)
            gen.cancel()  # a non-streaming answer is complete in the head
            record_response(s, head["body"])
        if usage is not None:
            usage.update(head["body"].get("usage") or {})
        return head["body"]["choices"][0]["message"]["content"] or ""

    async def stream(self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0,
                     usage: dict[str, Any] | None = None, **options: Any) -> AsyncIterator[str]:
        """Open a streaming answer; returns an iterator of text deltas once the engine accepted the request
        (errors before that raise here, with their status). ``usage`` gets the answer's token counts when the
        stream ends (vLLM's usage chunk); ``options`` are more of vLLM's sampling fields."""
        if usage is not None:
            options["stream_options"] = {"include_usage": True}
        req = chat_request(self._body(messages, max_tokens, temperature, stream=True, **options))
        # The span covers the call up to the engine's acceptance; the tokens follow on the stream.
        name, attributes = llm_call("chat", self.model, max_tokens, temperature, structured=False, stream=True)
        with span(name, SpanKind.CLIENT, **attributes):
            head, gen = await open_call(self.handle.generate, ("chat", req), self.settings)
        return _deltas(head, gen, usage)


async def _deltas(head: Mapping[str, Any], gen, usage: dict[str, Any] | None = None) -> AsyncIterator[str]:
    # ``head`` is a StreamHead (serve_app/protocol/stream.py); open_call hands it over as a plain dict.
    try:
        if not head.get("stream"):
            if usage is not None:
                usage.update(head["body"].get("usage") or {})
            yield head["body"]["choices"][0]["message"]["content"] or ""
            return
        async for line in gen:
            data = data_of(line)
            if data is None:
                continue
            if data == DONE_DATA:
                return
            event = json.loads(data)
            if "error" in event:
                err = event["error"]
                raise EngineError(err.get("message", "generation failed"), status_of(err), err.get("param"))
            if usage is not None and event.get("usage"):
                usage.update(event["usage"])
            for choice in event.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text
    finally:
        # Finished, failed or abandoned: the engine stops generating for this request.
        gen.cancel()
