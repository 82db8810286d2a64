"""Ingress invariants without Ray: oversized bodies get 413 (declared or streamed), malformed JSON gets a
400 error body, and a call whose replica dies before answering is retried with backoff while a timeout
or an exhausted retry budget becomes 504/503 and cancels the call."""

import asyncio

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from ray import exceptions as ray_exc

from serve_app.calls.handles import open_call
from serve_app.calls.streams import relay_stream
from serve_app.config.settings import AppSettings, IngressSettings
from serve_app.errors import ServiceUnavailable, UpstreamTimeout
from serve_app.ingress.context import IngressContext
from serve_app.ingress.errors import install_error_handlers
from serve_app.ingress.middleware import BodyLimitMiddleware
from tests.names import DEPLOYMENT

pytestmark = [pytest.mark.unit, pytest.mark.vllm]  # vllm: runs under `make check-gpu-build` too


class Body(BaseModel):
    text: str


def _client(limit=2048):
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware)
    install_error_handlers(app)
    settings = AppSettings.model_validate({"model": {"enabled": False}, "ingress": {"max_body_bytes": limit}})
    app.state.context = IngressContext.build(settings)

    @app.post("/echo")
    async def echo(body: Body):
        return {"n": len(body.text)}

    return TestClient(app)


def test_body_limit_declared_and_streamed():
    c = _client()
    assert c.post("/echo", json={"text": "a" * 100}).json() == {"n": 100}
    r = c.post("/echo", json={"text": "a" * 5000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"text": "'
        for _ in range(10):
            yield b"a" * 500
        yield b'"}'

    r = c.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("payload", [b"[1,2]", b'{"text": ', b'"s"', b'{"text": 5}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000])
def test_malformed_bodies_get_400(payload):
    r = _client(10**6).post("/echo", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


class FakeCall:
    """Same surface as a Serve streaming DeploymentResponseGenerator: async iteration and cancel()."""

    def __init__(self, items, fail=None, hang=False):
        self.items, self.fail, self.hang, self.cancelled = list(items), fail, hang, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail is not None:
            raise self.fail
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)

    def cancel(self):
        self.cancelled = True


class FakeMethod:
    """Same surface as a DeploymentHandle method: .options(stream=True).remote(*args)."""

    def __init__(self, calls):
        self.calls, self.made = list(calls), []

    def options(self, **_):
        return self

    def remote(self, *args):
        call = self.calls.pop(0)
        self.made.append(call)
        return call


def _settings(**kw):
    return IngressSettings.model_validate({"retry": {"attempts": 3, "backoff_s": 0.01}, **kw})


def test_retry_after_replica_death_then_success():
    died = ray_exc.ActorDiedError()
    m = FakeMethod([FakeCall([], fail=died), FakeCall([{"stream": False, "body": {"ok": 1}}])])
    head, _ = asyncio.run(open_call(m, ("chat", None), _settings()))
    assert head == {"stream": False, "body": {"ok": 1}}
    assert len(m.made) == 2 and m.made[0].cancelled


def test_retry_budget_exhausted_is_503():
    m = FakeMethod([FakeCall([], fail=ray_exc.ActorUnavailableError("x", None)) for _ in range(3)])
    with pytest.raises(ServiceUnavailable):
        asyncio.run(open_call(m, ("chat", None), _settings()))
    assert len(m.made) == 3


def test_timeout_is_504_and_cancels():
    call = FakeCall([], hang=True)
    with pytest.raises(UpstreamTimeout):
        asyncio.run(open_call(FakeMethod([call]), ("chat", None), _settings(request_timeout_s=0.05)))
    assert call.cancelled


def test_application_errors_are_not_retried():
    m = FakeMethod([FakeCall([], fail=ValueError("bad")), FakeCall([{"stream": False}])])
    with pytest.raises(ValueError):
        asyncio.run(open_call(m, ("chat", None), _settings()))
    assert len(m.made) == 1


def test_stream_failure_ends_with_error_event_and_done():
    class Broken(FakeCall):
        async def __anext__(self):
            if self.items:
                return self.items.pop(0)
            raise ray_exc.ActorDiedError()

    call = Broken(["data: {\"a\": 1}\n\n"])

    async def collect():
        return [x async for x in relay_stream(call)]

    out = asyncio.run(collect())
    assert out[0].startswith("data: {\"a\"")
    assert '"error"' in out[1] and out[-1] == "data: [DONE]\n\n"
    assert call.cancelled


def test_sampling_limits_come_from_the_settings():
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from serve_app.config.settings import AppSettings
    from serve_app.errors import InvalidRequest
    from serve_app.ingress.llm_serving import check_sampling

    settings = AppSettings.model_validate({"ingress": {"max_tokens": 100, "max_n": 2}})
    msgs = [{"role": "user", "content": "hi"}]
    check_sampling(ChatCompletionRequest(messages=msgs, max_tokens=100, n=2), settings)
    for fields, param in (({"max_tokens": 101}, "max_tokens"), ({"max_completion_tokens": 101}, "max_completion_tokens"),
                          ({"n": 3}, "n"), ({"max_tokens": 0}, "max_tokens"), ({"temperature": 2.5}, "temperature")):
        with pytest.raises(InvalidRequest) as err:
            check_sampling(ChatCompletionRequest(messages=msgs, **fields), settings)
        assert err.value.param == param
    # No cap configured: the engine checks max_tokens against the context.
    check_sampling(ChatCompletionRequest(messages=msgs, max_tokens=10**6), AppSettings.model_validate({}))


def test_lazily_validated_message_content_is_made_picklable():
    import pickle

    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from serve_app.ingress.chat_checks import materialized

    # pydantic leaves an empty content list of a developer message as a ValidatorIterator (not picklable).
    req = ChatCompletionRequest.model_validate({"messages": [{"content": [], "role": "developer"}]})
    with pytest.raises(TypeError):
        pickle.dumps(req)
    req.messages = materialized(req.messages)
    assert pickle.loads(pickle.dumps(req)).messages == [{"content": [], "role": "developer"}]


def test_llm_requests_fail_fast_once_no_replica_answered_for_a_while():
    from serve_app.ingress.availability import Availability

    now = [1000.0]  # the gate's clock, moved by the test instead of waiting for it
    gate = Availability(fail_fast_after_s=30, clock=lambda: now[0])
    gate.check()  # nothing recorded yet: not refused
    gate.record(ok=False)
    gate.check()  # down, but not for long enough
    now[0] += 29
    gate.record(ok=False)  # a second failed probe does not restart the count
    gate.check()
    now[0] += 1
    with pytest.raises(ServiceUnavailable, match="no healthy replica for 30s"):
        gate.check()
    gate.record(ok=True)  # one good probe lifts it
    gate.check()

    off = Availability(fail_fast_after_s=None, clock=lambda: now[0])
    off.record(ok=False)
    now[0] += 3600
    off.check()  # disabled: never refuses


def test_the_health_monitors_records_feed_each_models_gate():
    """One probing loop per component: the gate has none of its own, it reads the monitor's records."""
    from serve_app.config.settings import AppSettings
    from serve_app.ingress.context import IngressContext
    from tests.fakes.handles import Method

    state = {"up": False}

    def health():
        if not state["up"]:
            raise RuntimeError("no replica")
        return {}

    class _LLM:
        def __init__(self):
            self.health = Method(health)

    settings = AppSettings.model_validate({"ingress": {"llm_fail_fast_s": 0.01, "health_period_s": 0.01}})
    ctx = IngressContext.build(settings, {DEPLOYMENT: _LLM()})
    model = next(iter(ctx.models.models))

    async def scenario():
        ctx.health.start()
        await ctx.health.first_round(1.0)
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceUnavailable):
            ctx.models.gate(model)
        state["up"] = True
        await asyncio.sleep(0.05)
        ctx.models.gate(model)  # the next probe lifted it
        ctx.health.stop()

    asyncio.run(scenario())
