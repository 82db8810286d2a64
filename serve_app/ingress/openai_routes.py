"""OpenAI-compatible routes served by the LLM deployment: chat completions, completions, models."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest, ModelNotFound, NotFound
from serve_app.ingress.fastapi_app import app
from serve_app.ingress.relay import open_call, relay_stream

# OpenAI's documented range; vLLM alone would accept any non-negative temperature.
_MAX_TEMPERATURE = 2.0


def check_sampling(req: Any, settings: AppSettings) -> None:
    n = getattr(req, "n", None)
    if n is not None and not 1 <= n <= settings.ingress.max_n:
        raise InvalidRequest(f"n must be between 1 and {settings.ingress.max_n}", "n")
    t = getattr(req, "temperature", None)
    if t is not None and not 0.0 <= t <= _MAX_TEMPERATURE:
        raise InvalidRequest(f"temperature must be between 0 and {_MAX_TEMPERATURE:g}", "temperature")
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, field, None)
        if value is not None and value < 1:
            raise InvalidRequest(f"{field} must be at least 1", field)
    if req.model is not None and req.model != settings.model.name:
        raise ModelNotFound(f"The model `{req.model}` does not exist.", "model")


class OpenAIRoutes:
    """Mixed into the Ingress deployment, which provides ``self.llm`` and ``self.settings``."""

    llm: Any
    settings: AppSettings

    def _llm(self):
        if self.llm is None:
            raise NotFound("the LLM is disabled in this deployment")
        return self.llm

    async def _generate(self, kind: str, req: Any):
        self._llm()
        head, gen = await open_call(self.llm.generate, (kind, req), self.settings.ingress)
        if not head.get("stream"):
            return JSONResponse(head["body"])
        return StreamingResponse(relay_stream(gen), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest):
        if not body.messages:
            raise InvalidRequest("messages must contain at least one message", "messages")
        if len(body.messages) > self.settings.ingress.max_messages:
            raise InvalidRequest(f"at most {self.settings.ingress.max_messages} messages", "messages")
        check_sampling(body, self.settings)
        return await self._generate("chat", body)

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest):
        if body.prompt is None or body.prompt == "" or body.prompt == []:
            raise InvalidRequest("prompt must not be empty", "prompt")
        check_sampling(body, self.settings)
        return await self._generate("completion", body)

    @app.get("/v1/models")
    async def models(self):
        return JSONResponse(await self._llm().models.remote())
