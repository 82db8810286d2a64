"""Streams never hang and quiet streams stay open (serve_app/calls/streams.py): a stream whose next event does
not come within its idle deadline ends with an in-band 504 error event and [DONE], and the generation behind it
is cancelled; while the app's own streams (RAG, agent) wait, an SSE keep-alive comment goes out every
keep-alive period without cancelling the producer, and the comments do not postpone the idle deadline; the
openai SDK's SSE decoder skips the comments; a client that leaves between two events cancels and closes the
producer."""

import asyncio
import json

import pytest

from serve_app.calls.streams import relay_stream, sse_events
from serve_app.protocol.stream import DONE, KEEPALIVE, data_of, sse

pytestmark = pytest.mark.unit

# The fake producers below wait on real time; the ratios between their delays and the deadlines are wide
# (x5 or more), so a loaded machine does not change the outcome.


class _ReplicaStream:
    """What a streaming DeploymentHandle call gives: an async iterator of SSE lines, and ``cancel()``. Each line
    comes after ``gap_s``; after the last one it hangs (a wedged replica) unless ``ends``."""

    def __init__(self, lines, gap_s=0.0, ends=True):
        self.lines, self.gap_s, self.ends, self.cancelled = list(lines), gap_s, ends, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.lines:
            if self.ends:
                raise StopAsyncIteration
            await asyncio.sleep(3600)
        await asyncio.sleep(self.gap_s)
        return self.lines.pop(0)

    def cancel(self):
        self.cancelled = True


class _Producer:
    """The app's own event stream (RAG's, the agent's): an async generator that records how it ended."""

    def __init__(self, delays_s, hang_after=False):
        self.delays_s, self.hang_after = delays_s, hang_after
        self.cancelled = self.closed = False

    async def events(self):
        try:
            for i, delay in enumerate(self.delays_s):
                await asyncio.sleep(delay)
                yield {"type": "token", "text": str(i)}
            if self.hang_after:
                await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


def _collect(stream):
    async def run():
        return [x async for x in stream]

    return asyncio.run(run())


def _error(line):
    return json.loads(data_of(line))["error"]


def test_a_stream_within_its_idle_deadline_is_relayed_whole():
    lines = ['data: {"a": 1}\n\n', 'data: {"a": 2}\n\n', DONE]
    gen = _ReplicaStream(lines, gap_s=0.01)
    assert _collect(relay_stream(gen, idle_timeout_s=1.0)) == lines
    assert gen.cancelled  # the call is released once the stream ended


def test_an_idle_replica_stream_ends_with_a_504_error_event_and_done_and_is_cancelled():
    gen = _ReplicaStream(['data: {"a": 1}\n\n'], ends=False)
    out = _collect(relay_stream(gen, idle_timeout_s=0.1))
    assert out[0] == 'data: {"a": 1}\n\n' and out[-1] == DONE and len(out) == 3
    err = _error(out[1])
    assert err["type"] == "timeout_error" and err["code"] == "timeout" and "0.1s" in err["message"]
    assert gen.cancelled


def test_the_replica_stream_gets_no_keep_alive_comments():
    gen = _ReplicaStream(['data: {"a": 1}\n\n', DONE], gap_s=0.1)
    assert KEEPALIVE not in _collect(relay_stream(gen, idle_timeout_s=1.0))


def test_a_quiet_producer_gets_keep_alive_comments_then_its_events():
    producer = _Producer([0.2, 0.0])
    out = _collect(sse_events(producer.events(), idle_timeout_s=2.0, keepalive_s=0.02))
    events = [x for x in out if x != KEEPALIVE]
    assert events == [sse({"type": "token", "text": "0"}), sse({"type": "token", "text": "1"}), DONE]
    # The comments come while the first event is awaited, and the ticks did not cancel the producer.
    assert out.index(events[0]) >= 3 and all(x == KEEPALIVE for x in out[:out.index(events[0])])
    assert not producer.cancelled and producer.closed


def test_without_keep_alives_a_quiet_producer_sends_only_its_events():
    producer = _Producer([0.1])
    assert _collect(sse_events(producer.events(), idle_timeout_s=2.0, keepalive_s=0)) == [
        sse({"type": "token", "text": "0"}), DONE]


def test_an_idle_producer_ends_with_an_error_event_and_done_and_is_cancelled_despite_keep_alives():
    producer = _Producer([0.0], hang_after=True)
    out = _collect(sse_events(producer.events(), idle_timeout_s=0.2, keepalive_s=0.03))
    assert out[0] == sse({"type": "token", "text": "0"}) and out[-1] == DONE
    # Keep-alives went out while it was quiet, and did not postpone the deadline.
    assert out[1:-2] and all(x == KEEPALIVE for x in out[1:-2])
    err = _error(out[-2])
    assert err["type"] == "timeout_error" and err["code"] == "timeout" and "0.2s" in err["message"]
    assert producer.cancelled and producer.closed


def test_a_client_that_leaves_between_two_events_cancels_and_closes_the_producer():
    producer = _Producer([3600])

    async def scenario():
        stream = sse_events(producer.events(), idle_timeout_s=7200, keepalive_s=0.01)
        assert await stream.__anext__() == KEEPALIVE
        await stream.aclose()  # what the server does when the client is gone

    asyncio.run(scenario())
    assert producer.cancelled and producer.closed


def test_a_producer_failure_is_still_an_in_band_error_event():
    async def broken():
        yield {"type": "sources"}
        raise RuntimeError("vector store lost")

    out = _collect(sse_events(broken(), idle_timeout_s=1.0, keepalive_s=0.5))
    assert out[0] == sse({"type": "sources"}) and out[-1] == DONE
    assert _error(out[1])["code"] == "service_unavailable"  # an unexpected failure: details only in the log


def test_the_openai_sdk_skips_keep_alive_comments():
    from openai._streaming import SSEDecoder

    raw = [KEEPALIVE, sse({"type": "token", "text": "0"}), KEEPALIVE, KEEPALIVE, DONE]
    events = list(SSEDecoder().iter_bytes(iter(x.encode() for x in raw)))
    assert [e.data for e in events] == ['{"type": "token", "text": "0"}', "[DONE]"]
