"""The Ingress deployment: the public HTTP API. Routes are thin: validate, call a deployment, relay."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest, ModelNotFound
from serve_app.ingress.errors import install_error_handlers, unwrap
from serve_app.ingress.middleware import BodyLimitMiddleware
from serve_app.ingress.relay import open_call, relay_stream

logger = logging.getLogger("ray.serve")

app = FastAPI(title="serve_app", version="0.1.0", description="OpenAI-compatible LLM serving on Ray Serve.")
app.add_middleware(BodyLimitMiddleware)
install_error_handlers(app)

# OpenAI's documented range; vLLM alone would accept any non-negative temperature.
_MAX_TEMPERATURE = 2.0


def _check_sampling(req: Any, settings: AppSettings) -> None:
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


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    def __init__(self, llm: DeploymentHandle, settings: dict[str, Any]):
        self.settings = AppSettings.model_validate(settings)
        self.llm = llm
        app.state.max_body_bytes = self.settings.ingress.max_body_bytes

    async def _generate(self, kind: str, req: Any):
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
        _check_sampling(body, self.settings)
        return await self._generate("chat", body)

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest):
        if body.prompt is None or body.prompt == "" or body.prompt == []:
            raise InvalidRequest("prompt must not be empty", "prompt")
        _check_sampling(body, self.settings)
        return await self._generate("completion", body)

    @app.get("/v1/models")
    async def models(self):
        return JSONResponse(await self.llm.models.remote())

    @app.get("/healthz")
    async def healthz(self, request: Request):
        components: dict[str, Any] = {}
        try:
            detail = await asyncio.wait_for(self.llm.health.remote(), self.settings.ingress.health_timeout_s)
            components["llm"] = {"status": "ok", **detail}
        except asyncio.TimeoutError:
            components["llm"] = {"status": "unhealthy", "error": "health probe timed out"}
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            cause = unwrap(exc)
            components["llm"] = {"status": "unhealthy", "error": f"{type(cause).__name__}: {cause}"[:300]}
        healthy = all(c["status"] == "ok" for c in components.values())
        body = {
            "status": "ok" if healthy else "unhealthy",
            "release": self.settings.release,
            "components": components,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/livez")
    async def livez(self):
        return {"status": "ok"}
