"""Every handle call has a deadline (serve_app/calls/handles.py): a call whose caller names none gets the
default request deadline, never an unbounded wait; a blocking call past its deadline is cancelled and answered
as UpstreamTimeout like an async one; an /admin route whose release controller does not answer within
``ingress.admin_timeout_s`` answers 504 and cancels the call."""

import asyncio
import inspect

import pytest
from fastapi.testclient import TestClient

from serve_app.calls.handles import DEFAULT_TIMEOUT_S, call, call_blocking
from serve_app.config.settings import AppSettings, IngressSettings
from serve_app.errors import UpstreamTimeout

pytestmark = pytest.mark.unit


class _Response:
    """What a handle's ``.remote()`` gives: awaitable (after ``delay_s``), ``result()`` for sync callers,
    cancellable."""

    def __init__(self, value, delay_s):
        self.value, self.delay_s, self.cancelled = value, delay_s, False

    def __await__(self):
        async def run():
            await asyncio.sleep(self.delay_s)
            return self.value

        return run().__await__()

    def result(self, timeout_s=None):
        if timeout_s is not None and self.delay_s > timeout_s:
            raise TimeoutError(f"no result within {timeout_s}s")  # as DeploymentResponse.result raises
        return self.value

    def cancel(self):
        self.cancelled = True


class _Handle:
    """A handle whose every method answers after ``delays[method]`` (default 0)."""

    def __init__(self, **delays):
        self.delays, self.responses = delays, {}

    def __getattr__(self, method):
        handle = self

        class _Method:
            def remote(self, *args, **kwargs):
                response = _Response({"method": method}, handle.delays.get(method, 0))
                handle.responses.setdefault(method, []).append(response)
                return response

        return _Method()


def test_a_call_without_a_named_deadline_has_the_default_request_deadline():
    assert inspect.signature(call).parameters["timeout_s"].default == DEFAULT_TIMEOUT_S
    assert DEFAULT_TIMEOUT_S == IngressSettings().request_timeout_s


def test_a_blocking_call_past_its_deadline_is_cancelled_and_answered_as_a_timeout():
    handle = _Handle(ingest=10)
    with pytest.raises(UpstreamTimeout, match="ingest did not answer within 0.05s"):
        call_blocking(handle, "ingest", [], timeout_s=0.05)
    assert handle.responses["ingest"][0].cancelled
    assert call_blocking(_Handle(), "ingest", [], timeout_s=1) == {"method": "ingest"}


def test_an_admin_route_past_its_deadline_answers_504_and_cancels_the_call():
    from serve_app.ingress.context import IngressContext
    from serve_app.ingress.fastapi_app import create_app
    from serve_app.ingress.limits import digest

    controller = _Handle(status=10)  # answers its audit calls at once, never its status in time
    settings = AppSettings.model_validate({"model": {"enabled": False}, "ingress": {"admin_timeout_s": 0.1}})
    ctx = IngressContext.build(settings, admin_digest=digest("s3cret"), controller_lookup=lambda: controller)
    app = create_app(ctx)
    r = TestClient(app).get("/admin/status", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout_error" and "0.1s" in r.json()["error"]["message"]
    assert controller.responses["status"][0].cancelled
    assert controller.responses["audit"]  # the call was recorded before it was made
