"""The call layer (serve_app/calls/handles.py): a handle call's answer comes back; past its deadline it is
cancelled on the replica and answered as a 504-class UpstreamTimeout; a caller cancelled (client gone)
cancels the call too; retry delays stay within their equal-jitter bounds."""

import asyncio

import pytest

from serve_app.calls.handles import call, jittered
from serve_app.errors import UpstreamTimeout

pytestmark = pytest.mark.unit


class _Response:
    """What a DeploymentHandle's ``.remote()`` gives: awaitable, cancellable."""

    def __init__(self, value, delay_s):
        self.value, self.delay_s, self.cancelled = value, delay_s, False

    def __await__(self):
        return self._run().__await__()

    async def _run(self):
        await asyncio.sleep(self.delay_s)
        return self.value

    def cancel(self):
        self.cancelled = True


class _Handle:
    def __init__(self, delay_s):
        self.delay_s, self.responses = delay_s, []

    def __getattr__(self, method):
        handle = self

        class _Method:
            def remote(self, *args, **kwargs):
                handle.responses.append(_Response((method, args, kwargs), handle.delay_s))
                return handle.responses[-1]

        return _Method()


def test_the_answer_comes_back():
    handle = _Handle(0)
    assert asyncio.run(call(handle, "search", "q", 3, flag=True)) == ("search", ("q", 3), {"flag": True})


def test_past_its_deadline_a_call_is_cancelled_and_answered_as_a_timeout():
    handle = _Handle(10)
    with pytest.raises(UpstreamTimeout, match="health did not answer within 0.05s"):
        asyncio.run(call(handle, "health", timeout_s=0.05))
    assert handle.responses[0].cancelled


def test_a_cancelled_caller_cancels_the_call():
    handle = _Handle(10)

    async def scenario():
        task = asyncio.create_task(call(handle, "search"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert handle.responses[0].cancelled


def test_retry_delays_have_equal_jitter():
    delays = [jittered(2.0) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in delays) and len(set(delays)) > 1
