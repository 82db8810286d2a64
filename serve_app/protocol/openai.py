"""vLLM's OpenAI request models, guarded.

vLLM's own model validators run on the raw body before its fields are type-checked, and some assume a
field's type: ``"structured_outputs": false`` reaches ``.get`` on a bool. The exception that escapes is not a
validation error, so it would be answered 500. These subclasses turn any such exception raised while a body is
validated into a validation error (400, naming what was wrong); they accept and produce exactly what vLLM's
models do.
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as _VllmChat
from vllm.entrypoints.openai.completion.protocol import CompletionRequest as _VllmCompletion
# /tokenize and /detokenize take vLLM's own request models as they are (the first is a union: a prompt or messages).
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest  # noqa: F401

# Fields that vLLM's validators read as objects (mappings) when present.
_OBJECT_FIELDS = ("structured_outputs", "stream_options", "response_format")


def _guard(data: Any, handler):
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


class ChatCompletionRequest(_VllmChat):
    @model_validator(mode="wrap")
    @classmethod
    def _malformed_values_are_invalid(cls, data: Any, handler):
        return _guard(data, handler)


class CompletionRequest(_VllmCompletion):
    @model_validator(mode="wrap")
    @classmethod
    def _malformed_values_are_invalid(cls, data: Any, handler):
        return _guard(data, handler)
