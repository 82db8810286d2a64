"""The call layer (serve_app/calls/handles.py): a handle call's answer comes back; past its deadline it is
cancelled on the replica and answered as a 504-class UpstreamTimeout; a caller cancelled (client gone)
cancels the call too. The retry policy (serve_app/calls/retry.py): backoffs double up to their cap and stay
within their equal-jitter bounds; only the failures it names are retried, never a final one or a
cancellation; the last attempt's own exception is what the caller gets."""

import asyncio

import pytest

from serve_app.calls.handles import call
from serve_app.calls.retry import RetryPolicy
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


class _Failing:
    """An attempt that fails ``times`` times with ``exc``, then answers "ok"."""

    def __init__(self, exc, times=10**6):
        self.exc, self.times, self.calls = exc, times, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.times:
            raise self.exc
        return "ok"

    async def a(self):
        return self()


def test_backoffs_double_up_to_their_cap():
    slept, told = [], []
    policy = RetryPolicy(attempts=5, backoff_s=1.0, max_backoff_s=5.0, retry_on=(ValueError,))
    attempt = _Failing(ValueError("down"), times=4)

    def on_retry(n, exc, wait):
        told.append((n, str(exc), wait))

    assert policy.run(attempt, on_retry=on_retry, sleep=slept.append) == "ok"
    assert slept == [1.0, 2.0, 4.0, 5.0]
    assert told == [(1, "down", 1.0), (2, "down", 2.0), (3, "down", 4.0), (4, "down", 5.0)]


def test_retry_delays_have_equal_jitter():
    slept = []

    async def sleep(s):
        slept.append(s)

    policy = RetryPolicy(attempts=4, backoff_s=1.0, max_backoff_s=2.0, jitter=True, retry_on=(ValueError,))
    for _ in range(50):
        with pytest.raises(ValueError):
            asyncio.run(policy.run_async(_Failing(ValueError("down")).a, sleep=sleep))
    bounds = [1.0, 2.0, 2.0] * 50  # the backoff before each retry, capped; half fixed, half random
    assert all(b / 2 <= s <= b for s, b in zip(slept, bounds, strict=True))
    assert len(set(slept)) > 3


def test_only_the_named_failures_are_retried_and_the_last_ones_is_raised():
    policy = RetryPolicy(attempts=3, backoff_s=0, retry_on=(ValueError,), give_up=lambda exc: "final" in str(exc))
    for exc, calls in ((KeyError("other"), 1), (ValueError("final"), 1), (ValueError("down"), 3)):
        attempt = _Failing(exc)
        with pytest.raises(type(exc)) as raised:
            policy.run(attempt, sleep=lambda _: None)
        assert raised.value is exc and attempt.calls == calls


def test_a_cancellation_is_never_retried():
    policy = RetryPolicy(attempts=3, backoff_s=0, retry_on=(Exception,))
    attempt = _Failing(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(policy.run_async(attempt.a))
    assert attempt.calls == 1
