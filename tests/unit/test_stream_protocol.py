"""The typed stream protocol (serve_app/protocol/stream.py): the head of an LLM handle call, SSE framing that
parses back, [DONE] recognised in every form it arrives in, and mid-stream failures as OpenAI error events
that show a client-safe message and hide an unexpected one."""

import json

import pytest

from serve_app.errors import InvalidRequest
from serve_app.protocol.stream import DONE, DONE_DATA, data_of, error_event, head, is_done, sse

pytestmark = pytest.mark.unit


def test_head_of_a_whole_answer_and_of_a_stream():
    assert head(False, "r1", {"id": "x"}) == {"stream": False, "replica": "r1", "body": {"id": "x"}}
    assert head(True, "r1") == {"stream": True, "replica": "r1"}


def test_sse_lines_parse_back_and_done_is_recognised():
    event = {"type": "token", "text": "hi"}
    assert json.loads(data_of(sse(event))) == event
    assert data_of(": keep-alive\n\n") is None
    assert data_of(DONE) == DONE_DATA
    assert is_done(DONE) and is_done("data: [DONE]") and not is_done(sse(event))


def test_error_events_are_openai_error_bodies_with_safe_messages():
    shown = json.loads(data_of(error_event(InvalidRequest("max_tokens too large", "max_tokens"), "generic")))
    assert shown == {"error": {"message": "max_tokens too large", "type": "invalid_request_error",
                               "param": "max_tokens", "code": "invalid_value"}}
    hidden = json.loads(data_of(error_event(RuntimeError("/secret/path exploded"), "the replica failed")))
    assert hidden["error"]["message"] == "the replica failed" and hidden["error"]["code"] == "service_unavailable"
