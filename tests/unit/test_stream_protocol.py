"""The typed stream protocol (serve_app/protocol/stream.py): the head of an LLM handle call, SSE framing that
parses back, [DONE] recognised in every form it arrives in, and mid-stream failures as OpenAI error events
that show a client-safe message and hide an unexpected one. The typed lines are the lines as sent, keep their
type across Ray (pickled), and are the only ones the engine marks and the ingress reads: the stream's outcome
(finish reasons, usage, error, [DONE]) comes from them, and every line reaches the client unchanged."""

import asyncio
import json
import pickle

import pytest
import ray.cloudpickle

from serve_app.errors import InvalidRequest
from serve_app.protocol.stream import (
    DONE,
    DONE_DATA,
    ErrorEvent,
    OutcomeChunk,
    data_of,
    error_event,
    head,
    is_done,
    sse,
)

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
    assert isinstance(error_event(RuntimeError("x"), "generic"), ErrorEvent)  # typed: relays recognise it


# vLLM's chunks as its stream generator writes them (model_dump_json: compact JSON).
ROLE = 'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,' \
       '"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
TOKEN = 'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,' \
        '"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}\n\n'
FINISH = 'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,' \
         '"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n'
USAGE = 'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],' \
        '"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}\n\n'
VLLM_DONE = "data: [DONE]\n\n"


async def _lines(items):
    for item in items:
        yield item


def _collect(gen):
    async def run():
        return [x async for x in gen]

    return asyncio.run(run())


@pytest.mark.parametrize("line", [ErrorEvent(sse({"error": {"message": "m"}})), OutcomeChunk(FINISH)])
def test_typed_lines_are_the_lines_as_sent_and_keep_their_type_across_ray(line):
    assert line == str(line) and json.loads(data_of(line)) == line.body
    for dumps, loads in ((pickle.dumps, pickle.loads), (ray.cloudpickle.dumps, ray.cloudpickle.loads)):
        back = loads(dumps(line))
        assert type(back) is type(line) and back == line and back.body == line.body


def test_the_engine_marks_only_the_chunks_that_end_a_choice_or_carry_the_usage():
    from serve_app.llm.engine import typed_stream

    out = _collect(typed_stream(_lines([ROLE, TOKEN, FINISH, USAGE, VLLM_DONE])))
    assert out == [ROLE, TOKEN, FINISH, USAGE, VLLM_DONE]
    assert [type(x) for x in out] == [str, str, OutcomeChunk, OutcomeChunk, str]


class _Span:
    def __init__(self):
        self.attributes, self.status, self.ended = {}, None, False

    def set_attribute(self, key, value):
        self.attributes[key] = value

    def set_status(self, status):
        self.status = status

    def end(self):
        self.ended = True


class _Metric:
    def observe(self, *args, **kwargs):
        pass


@pytest.mark.parametrize("ending", ["done", "error"])
def test_the_ingress_reads_a_streams_outcome_from_its_typed_lines_and_relays_every_line(monkeypatch, ending):
    from serve_app.ingress import llm_serving

    monkeypatch.setattr(llm_serving, "metric", lambda name: _Metric())
    error = error_event(RuntimeError("replica died"), "the model replica failed during the stream")
    sent = [ROLE, TOKEN, OutcomeChunk(FINISH), OutcomeChunk(USAGE)] + ([DONE] if ending == "done" else [error, DONE])
    span, outcomes = _Span(), []
    out = _collect(llm_serving._observed(_lines(sent), {}, lambda ok, ttft_ms: outcomes.append(ok), 0.0, span))
    assert out == sent and span.ended
    assert span.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert span.attributes["gen_ai.usage.input_tokens"] == 5 and span.attributes["gen_ai.usage.output_tokens"] == 2
    assert outcomes == [ending == "done"] and (span.status is None) == (ending == "done")
