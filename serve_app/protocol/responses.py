"""Request bodies of the Responses API (``/v1/responses``) and of conversations (``/v1/conversations``), for
what the app serves of OpenAI's definitions: text input, messages, function calls and their outputs fed back,
function tools, ``previous_response_id`` and conversations. The top-level bodies refuse unknown parameters
(400 naming them, as OpenAI does); items and content parts accept extra fields, since clients send back the
output items they received (with ``annotations``, ``logprobs``, ``status``...).

Built-in tools (web search, file search, code interpreter, computer use, MCP), images and files in input,
background mode and prompt templates are not served: each is refused with a 400 naming its field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

# OpenAI's limits on metadata: 16 pairs, keys up to 64 characters, values up to 512.
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
# How many items one request may add to a conversation (OpenAI's limit).
MAX_ADDED_ITEMS = 20
# Ids of responses, conversations and items, the app's (``resp_<hex>``...) or a client's: letters, digits, "_" and
# "-", so that an id is a plain key in every store (PostgreSQL refuses a NUL byte in a text parameter).
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputText(_Loose):
    type: Literal["input_text"]
    text: str


class OutputText(_Loose):
    type: Literal["output_text"]
    text: str


class Refusal(_Loose):
    type: Literal["refusal"]
    refusal: str


Part = Annotated[InputText | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Loose):
    type: Literal["message"] = "message"
    id: Id | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]


class FunctionCallItem(_Loose):
    type: Literal["function_call"]
    id: Id | None = None
    call_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=64)
    arguments: str


class FunctionCallOutputItem(_Loose):
    type: Literal["function_call_output"]
    id: Id | None = None
    call_id: str = Field(min_length=1, max_length=64)
    output: str | list[InputText]


def _item_kind(value: Any) -> str:
    """An item's type; a message may leave it out (OpenAI's "easy" input message)."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) else "message"


Item = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class FunctionTool(_Loose):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Body):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class TextFormat(_Loose):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Loose):
    format: TextFormat | None = None


class ConversationRef(_Loose):
    id: Id


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return value
    if len(value) > _METADATA_PAIRS:
        raise ValueError(f"at most {_METADATA_PAIRS} key-value pairs")
    for key, text in value.items():
        if len(key) > _METADATA_KEY or len(text) > _METADATA_VALUE:
            raise ValueError(f"keys are at most {_METADATA_KEY} characters and values at most {_METADATA_VALUE}")
    return value


class ResponseCreate(_Body):
    model: str | None = None
    input: Annotated[str, Field(min_length=1)] | Annotated[list[Item], Field(min_length=1)]
    instructions: str | None = None
    previous_response_id: Id | None = None
    conversation: Id | ConversationRef | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    metadata: dict[str, str] | None = None
    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: Literal["auto", "none", "required"] | NamedFunction = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    user: str | None = Field(default=None, max_length=256)
    # Accepted as OpenAI's clients send them, with no effect here: nothing to include, no reasoning to shape,
    # no service tiers, no automatic truncation (a context too long is a 400), a prompt cache vLLM keeps itself.
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    service_tier: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    background: Literal[False] | None = Field(default=None, description="Background mode is not served.")

    _metadata = field_validator("metadata")(_check_metadata)

    @property
    def conversation_id(self) -> str | None:
        c = self.conversation
        return c.id if isinstance(c, ConversationRef) else c


class ConversationCreate(_Body):
    items: list[Item] | None = Field(default=None, max_length=MAX_ADDED_ITEMS)
    metadata: dict[str, str] | None = None

    _metadata = field_validator("metadata")(_check_metadata)


class ConversationUpdate(_Body):
    metadata: dict[str, str]

    _metadata = field_validator("metadata")(_check_metadata)


class ItemsCreate(_Body):
    items: list[Item] = Field(min_length=1, max_length=MAX_ADDED_ITEMS)
