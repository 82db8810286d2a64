"""The request metric and log line carry the status the client got: a request whose client left before any
answer started is 499 (nginx's "client closed request"), not a server error; an exception nothing answered
is 500."""

import asyncio
import logging

import pytest

from serve_app.ingress import middleware

pytestmark = pytest.mark.unit


class _Counted:
    def __init__(self, seen):
        self.seen = seen

    def inc(self, tags=None):
        self.seen.append(tags["status"])

    def observe(self, value, tags=None):
        pass


def _run(app, cancel_after=None):
    seen = []

    async def go():
        mw = middleware.MetricsMiddleware(app)
        sent = []

        async def send(message):
            sent.append(message)

        task = asyncio.create_task(mw({"type": "http", "method": "GET", "path": "/healthz", "headers": []}, None, send))
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            task.cancel()
        try:
            await task
        except (asyncio.CancelledError, RuntimeError):
            pass

    import serve_app.observability.metrics as metrics

    original = metrics.metric
    metrics.metric = lambda name: _Counted(seen) if name == "serve_app_http_requests" else _Counted([])
    try:
        asyncio.run(go())
    finally:
        metrics.metric = original
    return seen


def test_a_client_gone_before_the_answer_is_499(caplog):
    async def slow(scope, receive, send):
        await asyncio.sleep(60)

    with caplog.at_level(logging.INFO):
        assert _run(slow, cancel_after=0.05) == ["499"]
    assert [r.status_code for r in caplog.records if hasattr(r, "status_code")] == [499]


def test_a_client_gone_mid_answer_keeps_the_status_sent():
    async def streaming(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.sleep(60)

    assert _run(streaming, cancel_after=0.05) == ["200"]


def test_an_exception_nothing_answered_is_500():
    async def broken(scope, receive, send):
        raise RuntimeError("bug")

    assert _run(broken) == ["500"]
