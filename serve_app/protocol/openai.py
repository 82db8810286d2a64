"""vLLM's OpenAI request models, guarded.

vLLM's own model validators run on the raw body before its fields are type-checked, and some assume a
field's type: ``"structured_outputs": false`` reaches ``.get`` on a bool. The exception that escapes is not a
validation error, so it would be answered 500. These subclasses turn any such exception raised while a body is
validated into a validation error (400, naming what was wrong); they accept and produce exactly what vLLM's
models do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import GetJsonSchemaHandler, ModelWrapValidatorHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as _VllmChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest as _VllmCompletion

# /tokenize and /detokenize take vLLM's own request models as they are (the first is a union: a prompt or messages).
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest  # noqa: F401 - re-exported

# Fields that vLLM's validators read as objects (mappings) when present.
_OBJECT_FIELDS = ("structured_outputs", "stream_options", "response_format")


# The limits the app enforces whatever its configuration (serve_app/ingress/llm_serving.py and chat_checks.py,
# vLLM's sampling checks), stated in the OpenAPI schema so that a client or a schema-driven fuzzer sees them;
# the configurable ones (n, max_tokens, messages, tools) are in docs/architecture.md.
_LIMITS: dict[str, dict[str, Any]] = {
    "messages": {"minItems": 1},
    "prompt": {"minLength": 1, "minItems": 1},
    "temperature": {"minimum": 0, "maximum": 2},
    "top_p": {"exclusiveMinimum": 0, "maximum": 1},
    "min_p": {"minimum": 0, "maximum": 1},
    "presence_penalty": {"minimum": -2, "maximum": 2},
    "frequency_penalty": {"minimum": -2, "maximum": 2},
    "n": {"minimum": 1},
    "max_tokens": {"minimum": 1},
    "max_completion_tokens": {"minimum": 1},
}


def _with_limits(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with each limited property's own (non-null) alternatives bounded."""
    for name, limits in _LIMITS.items():
        prop = schema.get("properties", {}).get(name)
        if prop is None:
            continue
        for alt in prop.get("anyOf", [prop]):
            kind = alt.get("type")
            for key, value in limits.items():
                applies = (kind in ("integer", "number") and key in ("minimum", "maximum", "exclusiveMinimum")) or \
                    (kind == "string" and key == "minLength") or (kind == "array" and key in ("minItems",))
                if applies:
                    alt[key] = value
    return schema


def _guard(data: Any, handler: Callable[[Any], Any]) -> Any:
    if isinstance(data, dict):
        for name in _OBJECT_FIELDS:
            value = data.get(name)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{name} must be an object or null, not {type(value).__name__}")
    try:
        return handler(data)
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"a field has a value of the wrong type or shape ({type(exc).__name__}: {exc})"[:300]) \
            from None


class _Guarded:
    """What both request models add to vLLM's: the guard around validation and the limits in the schema.
    Listed before vLLM's class in the bases, so that its schema hook is the one pydantic finds."""

    @model_validator(mode="wrap")
    @classmethod
    def _malformed_values_are_invalid(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        return _guard(data, handler)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return _with_limits(handler.resolve_ref_schema(handler(core_schema)))


# No docstrings: pydantic would publish them as the models' descriptions in the OpenAPI schema.
class ChatCompletionRequest(_Guarded, _VllmChat):
    pass


class CompletionRequest(_Guarded, _VllmCompletion):
    pass
