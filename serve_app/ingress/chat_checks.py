"""The checks a chat request's messages and tools get at the ingress, before any engine work, with OpenAI's
rules where vLLM has none: its answer to a broken conversation or tool definition is a prompt the model
misreads, a grammar error, or a prompt too long for the context, each after the request queued for an engine."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest

# OpenAI's rule for a function's name.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def materialized(value: Any) -> Any:
    """``value`` with every lazily validated iterable made a list. pydantic validates an ``Iterable[...]``
    field (OpenAI's message types declare content parts and tool calls so) into a ValidatorIterator, which
    cannot be pickled to the LLM replica: e.g. ``"content": []`` in a message. Iterating it here validates
    it; its errors are the client's (400)."""
    if type(value).__name__ == "ValidatorIterator":
        value = list(value)
    if isinstance(value, dict):
        return {k: materialized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [materialized(v) for v in value]
    return value


def check_messages(body: Any, settings: AppSettings) -> None:
    """Count, materialize (in place) and pair the request's messages: every tool call an assistant made is
    answered by a tool message right after it, and every tool message answers one of them."""
    messages = body.messages
    if not messages:
        raise InvalidRequest("messages must contain at least one message", "messages")
    if len(messages) > settings.ingress.max_messages:
        raise InvalidRequest(f"at most {settings.ingress.max_messages} messages", "messages")
    try:
        body.messages = messages = materialized(messages)
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise InvalidRequest(f"messages: {exc}", "messages") from None
    waiting: list[str] = []  # ids of the last assistant turn's calls not answered yet
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in waiting:
                raise InvalidRequest(f"messages[{i}]: a message with role 'tool' must answer a tool call of the "
                                     "assistant message before it (no pending call has tool_call_id "
                                     f"{str(call_id)[:64]!r})", f"messages[{i}].tool_call_id")
            waiting.remove(call_id)
            continue
        if waiting:
            raise InvalidRequest(f"messages[{i}]: an assistant message with 'tool_calls' must be followed by tool "
                                 f"messages answering each call; not answered: {', '.join(waiting)[:200]}",
                                 f"messages[{i}]")
        if role == "assistant":
            waiting = [str(call.get("id")) for call in message.get("tool_calls") or () if isinstance(call, dict)]


def check_tools(body: Any, settings: AppSettings) -> None:
    """Tools within the limits, named as OpenAI names functions, once each, with parameters that are a JSON
    schema (what structured outputs compiles for 'required' or a named tool)."""
    tools = body.tools
    if not tools:
        return
    limits = settings.ingress
    if len(tools) > limits.max_tools:
        raise InvalidRequest(f"at most {limits.max_tools} tools", "tools")
    size = len(json.dumps([t.model_dump(exclude_none=True) for t in tools]))
    if size > limits.max_tools_bytes:
        raise InvalidRequest(f"the tool definitions are {size} bytes as JSON, more than {limits.max_tools_bytes}",
                             "tools")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        name = tool.function.name
        if not _TOOL_NAME.fullmatch(name):
            raise InvalidRequest(f"tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-'",
                                 f"tools[{i}].function.name")
        if name in seen:
            raise InvalidRequest(f"tools[{i}]: a second tool named {name!r}", f"tools[{i}].function.name")
        seen.add(name)
        parameters = tool.function.parameters
        if parameters is None:
            continue
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            where = "/".join(map(str, exc.path)) or "(root)"
            raise InvalidRequest(f"tools[{i}].function.parameters is not a valid JSON schema at {where}: "
                                 f"{exc.message[:200]}", f"tools[{i}].function.parameters") from None
        if parameters.get("type", "object") != "object":
            raise InvalidRequest(f"tools[{i}].function.parameters must describe an object (type 'object')",
                                 f"tools[{i}].function.parameters")
