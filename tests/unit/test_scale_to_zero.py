"""Models that scale to zero, without Ray: which models do, their health, gate and /v1/models card all come from
Serve's view of their deployments (the deployed ``min_replicas: 0``, the replicas' states) with no call to the
model; a request that finds one cold wakes it once (shared by the requests that arrive during the start),
waits up to the cold-start deadline, and past it gets 503 with Retry-After while the start goes on; a release's
watch probes such a model only when the release changed it.

Serve's application details are a function of the test's state; the LLM handle is a fake whose replica
"starts" when the test says so. The same against Serve: tests/release/test_scale_to_zero.py.
"""

import asyncio
import copy
from types import SimpleNamespace

import pytest

from serve_app.config.settings import AppSettings
from serve_app.errors import ModelStarting
from serve_app.ingress.context import IngressContext
from serve_app.ingress.llm_serving import generate
from serve_app.ingress.replicas import ServeReplicas
from serve_app.ingress.routes.models import _chat_cards
from serve_app.protocol.replicas import ReplicaCount, counts_of
from serve_app.release.controller import Releases
from serve_app.release.history import History
from serve_app.release.plan import scaled
from tests.fakes.clock import FakeClock
from tests.fakes.serve_gateway import FakeServeGateway
from tests.names import DEPLOYMENT, TINY_DEPLOYMENT

pytestmark = pytest.mark.unit

TINY, DEFAULT = "tiny-random-llama", "SmolLM2-135M-Instruct"
PLAIN = {"name": "serve_app", "import_path": "serve_app.app:build_app", "route_prefix": "/",
         "args": {"vector": {"enabled": False}, "models": [{"model": {"source": "tiny"}}]},
         "deployments": [{"name": TINY_DEPLOYMENT, "autoscaling_config": {"min_replicas": 0, "max_replicas": 1}}]}


def test_serves_view_of_replicas_gives_the_models_state():
    details = {"applications": {"a": {"deployments": {"d": {
        "status": "HEALTHY", "target_num_replicas": 1, "replicas": [{"state": "STARTING"}],
        "deployment_config": {"autoscaling_config": {"min_replicas": 0}}}}}}}
    assert counts_of(details) == {("a", "d"): ReplicaCount(0, 1, "HEALTHY", 0)}
    assert counts_of(details)[("a", "d")].scales_to_zero
    assert ReplicaCount(0, 0, "HEALTHY").health()["status"] == "scaled_to_zero"
    assert ReplicaCount(0, 1, "UPSCALING").health()["status"] == "starting"
    assert ReplicaCount(2, 2, "HEALTHY").health() == {"status": "ok", "replicas": 2, "target_replicas": 2,
                                                       "serve_status": "HEALTHY"}
    assert ReplicaCount(0, 1, "DEPLOY_FAILED").health()["status"] == "unhealthy"


class _Stream:
    def __init__(self, llm):
        self.llm, self.cancelled = llm, False

    async def __anext__(self):
        await self.llm.up.wait()
        return {"stream": False, "body": {"choices": [{"message": {"content": "hi"}}], "usage": {}}}

    def cancel(self):
        self.cancelled = True


class _LLM:
    """The tiny model's handle: its replica answers once ``up`` is set (the replica started)."""

    def __init__(self):
        self.up = asyncio.Event()
        self.calls: list[str] = []
        self.generate, self.health, self.models = self._Method(self, "generate"), self._Method(self, "health"), \
            self._Method(self, "models")

    class _Method:
        def __init__(self, llm, name):
            self.llm, self.name = llm, name

        def options(self, **_):
            return self

        def remote(self, *args):
            self.llm.calls.append(self.name)
            if self.name == "generate":
                return _Stream(self.llm)

            async def answer():
                await self.llm.up.wait()
                return {"status": "ok"}

            return answer()


def _context(cold_start_timeout_s: float):
    settings = AppSettings.model_validate({"vector": {"enabled": False}, "models": [{"model": {"source": "tiny"}}],
                                           "ingress": {"health_period_s": 0.02, "cold_start_timeout_s": cold_start_timeout_s}})
    llm, default = _LLM(), _LLM()
    default.up.set()
    serve = {"running": 0, "target": 0}

    def details():
        replicas = [{"state": "RUNNING"}] * serve["running"]
        return {"applications": {
            f"serve_app-{TINY_DEPLOYMENT}": {"deployments": {TINY_DEPLOYMENT: {
                "status": "HEALTHY", "target_num_replicas": serve["target"], "replicas": replicas,
                "deployment_config": {"autoscaling_config": {"min_replicas": 0, "max_replicas": 1}}}}},
            f"serve_app-{DEPLOYMENT}": {"deployments": {DEPLOYMENT: {  # always on: called as before
                "status": "HEALTHY", "target_num_replicas": 1, "replicas": [{"state": "RUNNING"}],
                "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}}}}}

    ctx = IngressContext.build(settings, {DEPLOYMENT: default, TINY_DEPLOYMENT: llm})
    ctx.models.zero.replicas = ServeReplicas(details, max_age_s=0)
    return ctx, llm, serve


REQ = SimpleNamespace(stream=False, max_tokens=4, max_completion_tokens=None, temperature=None)


def test_a_cold_model_is_called_by_client_requests_alone_and_one_start_serves_them_all():
    async def run():
        ctx, llm, serve = _context(cold_start_timeout_s=30)
        ctx.health.start()
        await ctx.health.first_round(1.0)
        for _ in range(5):  # rounds of the health monitor, a listing: none reaches the model
            await asyncio.sleep(0.03)
            record = ctx.health.snapshot()[f"llm:{TINY}"]
            assert record["status"] == "scaled_to_zero" and record["replicas"] == 0
            ctx.models.gate(TINY)  # the fail-fast gate lets requests through
        cards = await _chat_cards(ctx, TINY, llm)
        assert [c["id"] for c in cards] == [TINY] and llm.calls == []
        assert ctx.health.snapshot()[f"llm:{DEFAULT}"]["status"] == "ok"  # the other model: probed by a call
        # Three requests during one cold start: one wake (a health call), all answered once the replica is up.
        chats = [asyncio.create_task(generate(ctx, "chat", REQ, TINY, llm)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert sorted(llm.calls) == ["generate"] * 3 + ["health"]
        serve.update(running=1, target=1)
        llm.up.set()
        answers = await asyncio.gather(*chats)
        assert all(a.status_code == 200 for a in answers)
        await asyncio.sleep(0.05)
        assert ctx.models.zero.last_start_s[TINY] > 0 and not ctx.models.zero.cold(TINY)
        assert ctx.health.snapshot()[f"llm:{TINY}"]["status"] == "ok" and llm.calls.count("health") == 1
        ctx.health.stop()

    asyncio.run(run())


def test_past_the_cold_start_deadline_a_request_gets_503_and_the_start_goes_on():
    async def run():
        ctx, llm, serve = _context(cold_start_timeout_s=0.1)
        ctx.health.start()
        await ctx.health.first_round(1.0)
        with pytest.raises(ModelStarting) as refused:
            await generate(ctx, "chat", REQ, TINY, llm)
        assert refused.value.retry_after_s == 10.0 and refused.value.param == "model"
        wake = ctx.models.zero._waking[TINY]
        assert not wake.done()  # still waiting for the replica, for the next request
        serve.update(running=1, target=1)
        llm.up.set()
        await wake
        await asyncio.sleep(0.05)
        answer = await generate(ctx, "chat", REQ, TINY, llm)
        assert answer.status_code == 200 and llm.calls.count("health") == 1
        ctx.health.stop()

    asyncio.run(run())


def test_a_release_probes_a_model_at_zero_replicas_only_when_it_changes_it(tmp_path):
    clock = FakeClock()
    history = History(tmp_path)
    config = {"applications": [PLAIN]}
    history.add(actor="t", kind="initial", note=None, config=copy.deepcopy(config), changed=["everything"],
                status="good")
    gw = FakeServeGateway({"serve_app": PLAIN}, clock)
    gw.at_zero = {TINY_DEPLOYMENT}
    c = Releases("serve_app", history, gw, clock, clock.sleep)

    async def release(change) -> dict:
        new = copy.deepcopy(c._good()["config"])
        change(new["applications"][0]["args"])
        out = await c.deploy(new, "admin")
        await c.background
        return c.history.get(out["release"])

    async def run():
        # A release of the whole application that leaves the cold model as it was: no probe reaches it.
        rel = await release(lambda args: args.setdefault("rag", {}).update(default_top_k=3))
        assert rel["status"] == "good" and gw.probes and all(d != TINY_DEPLOYMENT for _, d in gw.probes), gw.probes
        # One that changes it: started once, to prove the new version.
        gw.probes.clear()
        rel = await release(lambda args: args["models"][0].setdefault("engine", {}).update(seed=1))
        assert rel["status"] == "good" and [d for _, d in gw.probes].count(TINY_DEPLOYMENT) == 1, gw.probes

    asyncio.run(run())


def test_scaling_by_a_factor_never_takes_a_model_to_zero_by_rounding():
    config = {"applications": [copy.deepcopy(PLAIN)]}
    app = config["applications"][0]
    app["deployments"][0]["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 4}
    entry, _ = scaled(config, "serve_app", TINY_DEPLOYMENT, None, 0.5)
    assert entry["deployments"][0]["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 2}
    app["deployments"][0]["autoscaling_config"] = {"min_replicas": 0, "max_replicas": 4}  # written out: stays
    entry, _ = scaled(config, "serve_app", TINY_DEPLOYMENT, None, 2)
    assert entry["deployments"][0]["autoscaling_config"]["min_replicas"] == 0
