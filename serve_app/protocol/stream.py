"""The typed stream protocol: what a streaming handle call to the LLM deployment yields, and the SSE framing
every stream of the app (relayed from vLLM, or the app's own RAG and agent events) leaves with.

A handle call to ``LLMServer.chat`` / ``completion`` yields a ``StreamHead`` first: either the whole answer
(``stream`` false, ``body`` set) or the announcement of a stream (``stream`` true), followed by the SSE lines of
vLLM's own stream, the last one ``data: [DONE]``. A failure in the middle of a stream becomes one in-band
error event (an OpenAI error body) and then ``[DONE]``, the way vLLM reports generation errors, so a client
never sees a silently truncated stream.

The lines are typed where their kind matters: an error event is an ``ErrorEvent`` and a chunk that ends a
choice or carries the token usage an ``OutcomeChunk``, both ``str`` subclasses whose text is the line as sent.
Whoever relays a stream recognises them by type and parses only those (``body``), once; every other line,
one per token, stays a plain ``str`` that is relayed untouched. Being strings, they are read by a consumer that
knows nothing of the types like any other line, and they cross Ray as pickled objects of their class.

The SSE framing is written here rather than with sse-starlette: the lines vLLM produces are already framed
(they are relayed as they are, with no re-encoding per token), and the app's own events need only the same
``data: <json>`` form. Its keep-alive pings are not taken up either: they run on a timer of their own, while
the app's keep-alive comments (serve_app/calls/streams.py) tick inside the same wait for the next event that
enforces the stream's idle deadline.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from typing import Any, TypedDict

from serve_app.errors import AppError, error_body, status_for, unwrap

logger = logging.getLogger("ray.serve")

DONE_DATA = "[DONE]"
DONE = f"data: {DONE_DATA}\n\n"
_PREFIX = "data: "
# An SSE comment (a line that starts with a colon): clients ignore it (the openai SDK's decoder included);
# proxies see traffic on a quiet stream and keep it.
KEEPALIVE = ": keep-alive\n\n"


class Event(str):
    """An SSE ``data:`` line of a known kind; the string is the line as sent."""

    @cached_property
    def body(self) -> dict[str, Any]:
        """The event's JSON payload, parsed on first use."""
        return json.loads(self[len(_PREFIX):])


class ErrorEvent(Event):
    """An in-band error event: its body is an OpenAI error body (``{"error": {...}}``)."""


class OutcomeChunk(Event):
    """A chunk of vLLM's stream that ends a choice (a finish reason) or carries the token usage."""


class StreamHead(TypedDict, total=False):
    """The first item of every streaming LLM handle call."""

    stream: bool  # True: SSE lines follow; False: ``body`` is the whole answer
    body: dict[str, Any]  # the OpenAI response body of a non-streaming answer
    replica: str  # the LLM replica that answers (the ``X-Served-By`` header)


def head(stream: bool, replica: str, body: dict[str, Any] | None = None) -> StreamHead:
    out: StreamHead = {"stream": stream, "replica": replica}
    if body is not None:
        out["body"] = body
    return out


def sse(obj: dict[str, Any]) -> str:
    """One JSON object as one SSE event."""
    return f"{_PREFIX}{json.dumps(obj)}\n\n"


def data_of(line: str) -> str | None:
    """The payload of an SSE ``data:`` line (``[DONE]`` included), or None for any other line."""
    line = line.strip()
    return line[len(_PREFIX):] if line.startswith(_PREFIX) else None


def is_done(line: str) -> bool:
    return data_of(line) == DONE_DATA


def error_event(exc: BaseException, generic: str) -> ErrorEvent:
    """An exception raised mid-stream as one SSE error event; unexpected 5xx causes keep their details in the
    log, not in the stream."""
    cause = unwrap(exc)
    status = status_for(cause) or 503
    logger.warning("stream failed mid-way: %s", cause)
    msg = str(cause) if status < 500 or isinstance(cause, AppError) else generic
    return ErrorEvent(sse(error_body(status, msg, getattr(cause, "param", None), getattr(cause, "code", None))))
