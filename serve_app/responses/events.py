"""A chat completion's stream as the Responses API's stream events: the chunks' text deltas become an output
message's ``response.output_text.delta`` events, their tool-call deltas ``function_call`` items with
``response.function_call_arguments.delta`` events, each item opened (``output_item.added``) when its first
delta comes and closed (``*.done``, ``output_item.done``) when the next item starts or the answer ends.
Every event carries the stream's ``sequence_number``; the response's lifecycle events (created, in progress,
completed / incomplete / failed) carry the response object as it stands.

The SSE framing is OpenAI's: an ``event:`` line naming the type, then the ``data:`` line.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from serve_app.responses.items import function_call, item_status, new_id, output_message


def sse_event(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


class StreamEvents:
    def __init__(self) -> None:
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # the items as they stand, in output order
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._text: int | None = None             # output index of the open message item
        self._calls: dict[int, int] = {}          # the chunk's tool-call index -> output index of its item
        self._open_calls: list[int] = []

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        out = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return out

    def lifecycle(self, kind: str, response: dict[str, Any]) -> dict[str, Any]:
        """``response.created`` / ``in_progress`` / ``completed`` / ``incomplete`` / ``failed``."""
        return self.event(f"response.{kind}", response=copy.deepcopy(response))

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of one chat chunk (its first choice: a response has one)."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self._text is None:
            item = output_message("", status="in_progress")
            item["content"] = []
            self._text = len(self.output)
            self.output.append(item)
            events.append(self.event("response.output_item.added", output_index=self._text, item=copy.deepcopy(item)))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            events.append(self.event("response.content_part.added", item_id=item["id"], output_index=self._text,
                                     content_index=0, part=copy.deepcopy(part)))
        item = self.output[self._text]
        item["content"][0]["text"] += text
        events.append(self.event("response.output_text.delta", item_id=item["id"], output_index=self._text,
                                 content_index=0, delta=text, logprobs=[]))
        return events

    def _close_text(self, status: str = "completed") -> list[dict[str, Any]]:
        if self._text is None:
            return []
        index, self._text = self._text, None
        item = self.output[index]
        part = item["content"][0]
        item["status"] = status
        return [self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                           text=part["text"], logprobs=[]),
                self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                           part=copy.deepcopy(part)),
                self.event("response.output_item.done", output_index=index, item=copy.deepcopy(item))]

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        fn = call.get("function") or {}
        key = call.get("index", 0)
        if key not in self._calls:
            events += self._close_text()  # the message before a call is whole
            item = function_call(call.get("id") or new_id("call"), fn.get("name") or "", "", status="in_progress")
            self._calls[key] = len(self.output)
            self._open_calls.append(len(self.output))
            self.output.append(item)
            events.append(self.event("response.output_item.added", output_index=self._calls[key],
                                     item=copy.deepcopy(item)))
        index = self._calls[key]
        item = self.output[index]
        if fn.get("name") and not item["name"]:
            item["name"] = fn["name"]
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=index, delta=fn["arguments"]))
        return events

    def close(self, failed: bool = False) -> list[dict[str, Any]]:
        """The closing events of every item still open: the answer ended (``failed``: by an error). Items of an
        answer cut short (an error, ``max_output_tokens``) are ``incomplete``."""
        status = "incomplete" if failed else item_status(self.finish_reason)
        events = self._close_text(status)
        for index in self._open_calls:
            item = self.output[index]
            item["status"] = status
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                     name=item["name"], arguments=item["arguments"]))
            events.append(self.event("response.output_item.done", output_index=index, item=copy.deepcopy(item)))
        self._open_calls = []
        return events
