"""The release controller's flows without Ray: what it applies to Serve, in which order, and what it records.
A canary is started, routed, judged, then removed or promoted, and the current release is never touched
while it runs; a rollback request aborts it; a failed release is rolled back; a canary left behind is
removed; the start deadline allows the replaced replicas' drain time; and the release package reaches Serve
only through its gateway.

Serve is the fake gateway of tests/fakes/serve_gateway.py (the interface the real one implements) and time an
injected clock, so the real state machines run with their real deadlines, without waiting for them; the real
flow against Serve is tested in tests/release/test_releases.py.
"""

import ast
import asyncio
import copy
from pathlib import Path

import pytest

from serve_app.config.apps import router_config
from serve_app.config.model_settings import RoutingSettings
from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest
from serve_app.release.canary import CANARY, PRIMARY
from serve_app.release.controller import Releases
from serve_app.release.history import History
from serve_app.release.live import Live
from serve_app.release.rollout import ReleaseFailed, ReleaseState, Rollout
from tests.fakes.clock import FakeClock
from tests.fakes.serve_gateway import FakeServeGateway
from tests.names import DEPLOYMENT

pytestmark = pytest.mark.unit

APP = {"name": "serve_app", "route_prefix": "/", "import_path": "serve_app.app:build_app",
       "args": {"vector": {"enabled": False}},
       "logging_config": {"encoding": "JSON"},
       "deployments": [{"name": DEPLOYMENT, "autoscaling_config": {"min_replicas": 2, "max_replicas": 4}},
                       {"name": "Ingress"}]}
CONFIG = {"applications": [APP]}
CANARY_APP = f"serve_app-{DEPLOYMENT}-canary"
MODEL = "SmolLM2-135M-Instruct"  # the first (default) model's served name
LEFTOVER_APP = "serve_app-canary"  # the name earlier releases gave the first model's canary
LEFTOVER = {"name": LEFTOVER_APP, "import_path": "serve_app.app:build_llm", "route_prefix": None,
            "args": {"deployment": "LLMServer"}}


def _controller(state_dir, leftover=None) -> tuple[Releases, FakeServeGateway]:
    """A controller whose history holds release 1 (CONFIG, good), over a Serve that runs it (and ``leftover``)."""
    clock = FakeClock()
    history = History(state_dir)
    history.add(actor="t", kind="initial", note=None, config=copy.deepcopy(CONFIG), changed=["everything"],
                status="good")
    gateway = FakeServeGateway({"serve_app": APP} | ({LEFTOVER_APP: leftover} if leftover else {}), clock)
    return Releases("serve_app", history, gateway, clock, clock.sleep), gateway


def _release(**engine):
    config = copy.deepcopy(CONFIG)
    config["applications"][0]["args"]["engine"] = engine
    return config


def _ingress_user_config(config):
    app = next(a for a in config["applications"] if a["name"] == "serve_app")
    return next(d for d in app["deployments"] if d["name"] == "Ingress").get("user_config")


async def _settle(c: Releases) -> None:
    """Until the controller's work in the background (a deploy, a canary, a clean-up) is over."""
    if c.background is not None:
        await asyncio.wait([c.background])


def test_a_failing_canary_is_started_routed_then_removed_and_the_current_release_kept(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        phases = []

        async def on_probe(app, deployment):
            if app == CANARY_APP:  # the window's probe of the canary, once a second
                phases.append((await c.health())["canary"])
                # What the ingress replicas report: every answer of the canary failed.
                c.canary_report(n, {PRIMARY: {"requests": 20, "errors": 0}, CANARY: {"requests": 20, "errors": 20}})

        gw.on_probe = on_probe
        out = await c.deploy(_release(max_num_seqs=8), "admin", canary={"share": 0.25})
        n = out["release"]
        assert out["canary"]["share"] == 0.25 and out["status"] == "deploying"
        await _settle(c)
        return c, gw, n, phases

    c, gw, n, phases = asyncio.run(run())
    assert phases and set(phases) == {"window"}
    rel = c.history.get(n)
    assert rel["status"] == "failed" and rel["kind"] == "canary" and "canary rolled back" in rel["outcome"]
    assert "canary error rate 100.0% (20/20)" in rel["outcome"]
    names = [[a["name"] for a in cfg["applications"]] for cfg in gw.applied]
    # 1 canary up without traffic, 2 routed, 3 routing back, 4 canary removed.
    assert names == [["serve_app", CANARY_APP]] * 3 + [["serve_app"]]
    routes = [(_ingress_user_config(cfg) or {}).get("canaries") for cfg in gw.applied]
    assert routes[0] is None
    assert routes[1] == {MODEL: {"app": CANARY_APP, "deployment": DEPLOYMENT, "share": 0.25, "release": n}}
    assert routes[2] is None and routes[3] is None
    # The current release's own application is applied unchanged (labelled with its own number) throughout.
    assert all(_ingress_user_config(cfg)["release"] == "1" for cfg in gw.applied)
    assert all(next(a for a in cfg["applications"] if a["name"] == "serve_app")["args"] == APP["args"]
               for cfg in gw.applied)
    # The canary application: the new args, the LLM alone, sized to its share, logging kept.
    canary = next(a for a in gw.applied[0]["applications"] if a["name"] == CANARY_APP)
    assert canary["import_path"] == "serve_app.app:build_llm" and canary["args"]["engine"]["max_num_seqs"] == 8
    assert canary["args"]["deployment"] == DEPLOYMENT and "vector" not in canary["args"]  # the LLM's settings alone
    # Routed by the prefix router as the current release's LLM is; its tree actor removed with the application.
    assert canary["deployments"] == [{"name": DEPLOYMENT, "num_replicas": 1,
                                      "request_router_config": router_config(RoutingSettings())}]
    assert gw.forgotten == [(CANARY_APP, [DEPLOYMENT])]
    assert canary["logging_config"] == {"encoding": "JSON"} and canary["route_prefix"] is None
    assert not c.state.canaries and not c.state.deploying and c.history.last_good()["n"] == 1


def test_a_passing_canary_is_promoted_as_a_whole_release(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)

        async def on_probe(app, deployment):
            if app == CANARY_APP:
                c.canary_report(n, {PRIMARY: {"requests": 5, "errors": 0}, CANARY: {"requests": 5, "errors": 0}})

        gw.on_probe = on_probe
        n = (await c.deploy(_release(max_num_seqs=8), "admin", canary={}))["release"]
        await _settle(c)
        return c, gw, n

    c, gw, n = asyncio.run(run())
    rel = c.history.get(n)
    assert rel["status"] == "good" and rel["outcome"].startswith("canary passed")
    last = gw.applied[-1]
    assert [a["name"] for a in last["applications"]] == ["serve_app"]
    assert last["applications"][0]["args"]["engine"] == {"max_num_seqs": 8}
    assert _ingress_user_config(last) == {"release": str(n)}
    assert c.history.last_good()["n"] == n and c.state.serving == n


def test_rollback_during_a_canary_aborts_it(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        started = asyncio.Event()

        async def on_probe(app, deployment):
            if app == CANARY_APP:
                started.set()
                await asyncio.Event().wait()  # the window's probe hangs until the rollback aborts the canary

        gw.on_probe = on_probe
        n = (await c.deploy(_release(max_num_seqs=8), "admin", canary={}))["release"]
        await asyncio.wait_for(started.wait(), 5)
        out = await c.rollback("admin")
        return c, gw, n, out

    c, gw, n, out = asyncio.run(run())
    assert out == {"release": n, "status": "failed", "changed": [], "aborted_canary": True}
    assert "aborted" in c.history.get(n)["outcome"]
    assert [a["name"] for a in gw.applied[-1]["applications"]] == ["serve_app"]


def test_canary_counts_are_taken_only_for_the_running_canary_in_its_window(tmp_path):
    report = {PRIMARY: {"requests": 3, "errors": 0, "ttft_ms": [10.0]}, CANARY: {"requests": 1, "errors": 1}}
    seen = {}

    async def run():
        c, gw = _controller(tmp_path)
        c.canary_report(2, report)  # no canary out: ignored

        def on_apply(config):
            if "starting" not in seen:
                seen["starting"] = next(iter(c.state.canaries.values())).phase
                c.canary_report(2, report)  # before the window: ignored

        async def on_probe(app, deployment):
            if app == CANARY_APP and "window" not in seen:
                c.canary_report(3, report)  # another release: ignored
                c.canary_report(2, report)
                seen["window"] = (await c.status())["canary"]

        gw.on_apply, gw.on_probe = on_apply, on_probe
        assert (await c.deploy(_release(max_num_seqs=8), "admin", canary={}))["release"] == 2
        await _settle(c)

    asyncio.run(run())
    assert seen["starting"] == "starting" and seen["window"]["phase"] == "window"
    assert seen["window"][PRIMARY]["requests"] == 3 and seen["window"][CANARY]["errors"] == 1


def test_a_leftover_canary_is_removed_by_the_next_call_and_retried_after_a_failure(tmp_path):
    async def run():
        c, gw = _controller(tmp_path, leftover=LEFTOVER)
        gw.fail_apply = 2  # routing back and the removal both fail
        await c.health()  # /healthz: starts the removal
        await _settle(c)
        assert c.state.leftover_canary and LEFTOVER_APP in gw.apps
        await c.health()
        await _settle(c)
        return c, gw

    c, gw = asyncio.run(run())
    assert not c.state.leftover_canary and LEFTOVER_APP not in gw.apps
    assert _ingress_user_config(gw.applied[-1]) == {"release": "1"}


def test_a_deploy_waits_for_a_leftover_canary_instead_of_refusing(tmp_path):
    async def run():
        c, gw = _controller(tmp_path, leftover=LEFTOVER)
        out = await c.deploy(_release(max_num_seqs=16), "admin")
        await _settle(c)
        return c, gw, out["release"]

    c, gw, n = asyncio.run(run())
    assert c.history.get(n)["status"] == "good" and CANARY_APP not in gw.apps


@pytest.mark.parametrize("overrides, field", [({"share": 1.5}, "share"), ({"bogus": 1}, "bogus")])
def test_invalid_canary_settings_are_refused_before_anything_is_applied(tmp_path, overrides, field):
    c, gw = _controller(tmp_path)
    with pytest.raises(InvalidRequest, match=field):
        asyncio.run(c.deploy(_release(max_num_seqs=8), "admin", canary=overrides))
    assert gw.applied == [] and len(c.history.list()) == 1


def test_a_release_failing_its_watch_is_rolled_back_to_the_last_good_one(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)

        async def on_probe(app, deployment):
            if deployment == DEPLOYMENT and _ingress_user_config({"applications": list(gw.apps.values())}) \
                    == {"release": "2"}:
                raise RuntimeError("the engine died")

        gw.on_probe = on_probe
        await c.deploy(_release(max_num_seqs=8), "admin")
        await _settle(c)
        return c, gw

    c, gw = asyncio.run(run())
    failed, back = c.history.get(2), c.history.get(3)
    assert failed["status"] == "failed" and failed["rolled_back_to"] == 3
    assert f"{DEPLOYMENT} failed its health check: RuntimeError: the engine died" in failed["outcome"]
    assert back["kind"] == "rollback" and back["status"] == "good" and back["outcome"].startswith("release 1 serving")
    assert gw.applied[-1]["applications"][0]["args"] == APP["args"]
    assert _ingress_user_config(gw.applied[-1]) == {"release": "3"}
    assert c.state.serving == 3 and c.history.last_good()["n"] == 3


def _time_to_ready(state_dir, healthy_after, graceful_s):
    """Serve's details while a release's old replica drains: UPDATING until ``healthy_after`` seconds after
    the apply. Returns how long the rollout's own wait took on the injected clock (nothing is polled here)."""
    clock = FakeClock()
    gw = FakeServeGateway({"serve_app": APP}, clock, ready_after_s=healthy_after, graceful_shutdown_s=graceful_s)
    rollout = Rollout("serve_app", Live("serve_app", gw, CONFIG, 1), History(state_dir), ReleaseState(serving=1),
                      lambda: None, clock, clock.sleep)
    settings = AppSettings.model_validate({**APP["args"], "releases": {"ready_timeout_s": 0.5}})
    t0 = clock()
    asyncio.run(rollout.wait_ready(gw.deployed_at, settings))
    return clock() - t0


def test_a_release_is_given_its_replicas_drain_time_on_top_of_its_start_deadline(tmp_path):
    # Still draining after the start deadline, within the replicas' graceful_shutdown_timeout_s: ready.
    assert _time_to_ready(tmp_path, healthy_after=1.5, graceful_s=3) == 1.5
    # The same without drain time (graceful_shutdown_timeout_s 0): the deadline holds as before.
    with pytest.raises(ReleaseFailed, match="within 0.5s"):
        _time_to_ready(tmp_path, healthy_after=1.5, graceful_s=0)
    # Past both: failed, and the message says how long was allowed.
    with pytest.raises(ReleaseFailed, match=r"within 0.5s \(\+1s for replicas to drain\)"):
        _time_to_ready(tmp_path, healthy_after=30, graceful_s=1)


def test_only_the_gateway_talks_to_serve():
    package = Path(__file__).resolve().parents[2] / "serve_app" / "release"
    for path in sorted(package.glob("*.py")):
        if path.name == "gateway.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not [n for n in names if n == "ray.serve" or n.startswith("ray.serve.")], path.name
