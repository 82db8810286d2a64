"""Responses API items <-> chat completions: what a response's model call is made of, and what its answer
becomes.

A response is served as one chat completion: its context (the items of the response it follows, or of its
conversation) and its own input are turned into chat messages here, rendered by the model's chat template in
the LLM replica like any chat request's, and the chat answer is turned back into output items. Items are kept
in one canonical form (OpenAI's item objects, each with its id), which is what ``input_items`` and
conversation items list and what the store keeps, so the messages of a follow-up are rebuilt identically on
any replica. Function calls stay in the context: an assistant's calls become its message's ``tool_calls`` and
their outputs ``tool`` messages, in order.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from serve_app.errors import InvalidRequest
from serve_app.protocol.responses import FunctionCallItem, FunctionCallOutputItem, MessageItem, ResponseCreate


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_of(parts: list[Any]) -> str:
    return "".join(str(getattr(p, "text", None) or getattr(p, "refusal", "")) for p in parts)


def canonical(items: str | list[Any]) -> list[dict[str, Any]]:
    """A request's ``input`` (text, or validated items) as stored items, each with an id."""
    if isinstance(items, str):
        items = [MessageItem(role="user", content=items)]
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            kind = "output_text" if item.role == "assistant" else "input_text"
            text = item.content if isinstance(item.content, str) else _text_of(item.content)
            part: dict[str, Any] = {"type": kind, "text": text}
            if kind == "output_text":
                part["annotations"] = []
            out.append({"type": "message", "id": item.id or new_id("msg"), "role": item.role, "content": [part],
                        "status": "completed"})
        elif isinstance(item, FunctionCallItem):
            out.append({"type": "function_call", "id": item.id or new_id("fc"), "call_id": item.call_id,
                        "name": item.name, "arguments": item.arguments, "status": "completed"})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else _text_of(item.output)
            out.append({"type": "function_call_output", "id": item.id or new_id("fco"), "call_id": item.call_id,
                        "output": output, "status": "completed"})
    return out


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """The chat messages of stored items: ``instructions`` first (a system message; instructions are the
    request's own and never carried over from a previous response), then each message; a function call joins
    the assistant message just before it (or starts one), its output is a ``tool`` message."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": "".join(p.get("text") or p.get("refusal") or ""
                                                              for p in item["content"])})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def chat_tools(req: ResponseCreate) -> dict[str, Any]:
    """The chat request's ``tools``, ``tool_choice`` and ``response_format`` of a response's request."""
    out: dict[str, Any] = {}
    if not req.tools and req.tool_choice not in ("auto", "none"):
        raise InvalidRequest("tool_choice 'required' or a named function needs tools", "tool_choice")
    if req.tools:
        out["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                        for t in req.tools]
        choice = req.tool_choice
        out["tool_choice"] = choice if isinstance(choice, str) else {"type": "function",
                                                                      "function": {"name": choice.name}}
        out["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name or "output", "schema": fmt.schema_ or {}}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    return out


def output_message(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id or new_id("msg"), "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def function_call(call_id: str, name: str, arguments: str, item_id: str | None = None,
                  status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id or new_id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def output_of(chat: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """A whole chat answer's output items (its text, then its tool calls) and its finish reason."""
    choice = chat["choices"][0]
    message = choice.get("message") or {}
    status = item_status(choice.get("finish_reason"))
    out = [output_message(message["content"], status=status)] if message.get("content") else []
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        out.append(function_call(call.get("id") or new_id("call"), fn.get("name", ""), fn.get("arguments") or "",
                                 status=status))
    return out, choice.get("finish_reason")


def item_status(finish_reason: str | None) -> str:
    """An output item's status: cut by ``max_output_tokens`` (a finish for length) is ``incomplete``."""
    return "incomplete" if finish_reason == "length" else "completed"


def check_ids(context: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """Every item id once in a model call's items (OpenAI refuses a duplicate): a page of a list is found by
    the id it starts after, which must name one item."""
    seen = {item["id"] for item in context}
    for i, item in enumerate(new):
        if item["id"] in seen:
            raise InvalidRequest(f"Duplicate item found with id {item['id']!r}", f"input[{i}].id")
        seen.add(item["id"])


def truncated(context: list[dict[str, Any]], room: int) -> list[dict[str, Any]]:
    """``truncation: auto``: the newest ``room`` items of the context, not starting inside a function call's
    answer (a ``tool`` message must follow its call)."""
    kept = context[len(context) - room:] if room > 0 else []
    while kept and kept[0]["type"] == "function_call_output":
        kept = kept[1:]
    return kept


def usage_of(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not chat_usage:
        return None
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": chat_usage.get("prompt_tokens", 0),
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": chat_usage.get("completion_tokens", 0), "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": chat_usage.get("total_tokens", 0)}


def response_object(response_id: str, req: ResponseCreate, model: str, *, status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None = None, finish_reason: str | None = None,
                    error: dict[str, Any] | None = None, created_at: int | None = None) -> dict[str, Any]:
    """The response object, as OpenAI's clients parse it. A finish for length makes it ``incomplete``."""
    incomplete = None
    if status == "completed" and finish_reason == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    conversation = req.conversation_id
    return {
        "id": response_id, "object": "response", "created_at": created_at or int(time.time()), "status": status,
        "error": error, "incomplete_details": incomplete, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "model": model, "output": output,
        "parallel_tool_calls": req.parallel_tool_calls, "previous_response_id": req.previous_response_id,
        "conversation": {"id": conversation} if conversation else None,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "tool_choice": req.tool_choice if isinstance(req.tool_choice, str) else req.tool_choice.model_dump(),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools], "text": {"format": {"type": "text"}}
        if req.text is None or req.text.format is None else {"format": req.text.format.model_dump(
            by_alias=True, exclude_none=True)},
        "truncation": req.truncation or "disabled", "store": req.store, "background": False,
        "metadata": req.metadata or {}, "user": req.user, "usage": usage, "service_tier": "default",
    }
