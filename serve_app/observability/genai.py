"""Span names and attributes of OpenTelemetry's GenAI and database semantic conventions, for the app's LLM
calls, agent runs, tool executions and vector searches: what GenAI-aware trace backends group and chart by
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.*``; ``execute_tool {name}``;
``db.system.name``). The constants are the installed ``opentelemetry-semantic-conventions``' own."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as G
from opentelemetry.semconv.attributes import db_attributes as DB

# gen_ai.provider.name: who answers the model calls. Not one of the convention's well-known values (those
# name hosted APIs); the convention allows any other.
PROVIDER = "vllm"
AGENT_NAME = "serve_app.agent"
# db.system.name of the vector store (the convention's value for Qdrant is not listed either).
VECTOR_SYSTEM = "qdrant"


def llm_call(operation: str, model: str, max_tokens: int | None = None, temperature: float | None = None,
             **extra: Any) -> tuple[str, dict[str, Any]]:
    """Name and attributes of a model call span: ``{operation} {model}`` ("chat", "text_completion")."""
    attributes = {G.GEN_AI_OPERATION_NAME: operation, G.GEN_AI_PROVIDER_NAME: PROVIDER,
                  G.GEN_AI_REQUEST_MODEL: model, G.GEN_AI_REQUEST_MAX_TOKENS: max_tokens,
                  G.GEN_AI_REQUEST_TEMPERATURE: temperature, **extra}
    return f"{operation} {model}", {k: v for k, v in attributes.items() if v is not None}


def record_response(span: trace.Span, body: dict[str, Any]) -> None:
    """A model answer's id, model, finish reasons and token usage on its call's span."""
    if body.get("id"):
        span.set_attribute(G.GEN_AI_RESPONSE_ID, str(body["id"]))
    if body.get("model"):
        span.set_attribute(G.GEN_AI_RESPONSE_MODEL, str(body["model"]))
    reasons = [c.get("finish_reason") for c in body.get("choices") or () if c.get("finish_reason")]
    if reasons:
        span.set_attribute(G.GEN_AI_RESPONSE_FINISH_REASONS, reasons)
    usage = body.get("usage") or {}
    if usage.get("prompt_tokens") is not None:
        span.set_attribute(G.GEN_AI_USAGE_INPUT_TOKENS, int(usage["prompt_tokens"]))
    if usage.get("completion_tokens") is not None:
        span.set_attribute(G.GEN_AI_USAGE_OUTPUT_TOKENS, int(usage["completion_tokens"]))


def agent_run(**extra: Any) -> tuple[str, dict[str, Any]]:
    return f"invoke_agent {AGENT_NAME}", {G.GEN_AI_OPERATION_NAME: "invoke_agent", G.GEN_AI_AGENT_NAME: AGENT_NAME,
                                          **extra}


def tool_execution(name: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return f"execute_tool {name}", {G.GEN_AI_OPERATION_NAME: "execute_tool", G.GEN_AI_TOOL_NAME: name,
                                    G.GEN_AI_TOOL_TYPE: "function", **extra}


def vector_search(collection: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return f"search {collection}", {DB.DB_SYSTEM_NAME: VECTOR_SYSTEM, DB.DB_OPERATION_NAME: "search",
                                    DB.DB_COLLECTION_NAME: collection, **extra}
