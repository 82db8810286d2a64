"""The release controller's canary bookkeeping without Ray: what it applies, in which order, and what it records.

Serve is replaced by a stub of the three calls the controller makes (read the deployed applications, apply
a config, wait for it to be ready); the real flow against Serve is tested in tests/release/test_releases.py.
"""

import asyncio
import copy
import time

import pytest

from serve_app.release.canary import CANARY, PRIMARY
from serve_app.release.controller import ReleaseController, ReleaseFailed
from serve_app.release.history import History

pytestmark = pytest.mark.unit

Base = ReleaseController.__ray_metadata__.modified_class.__mro__[1]  # the class under @ray.remote

APP = {"name": "serve_app", "route_prefix": "/", "import_path": "serve_app.app:build_app",
       "args": {"vector": {"enabled": False}},
       "logging_config": {"encoding": "JSON"},
       "deployments": [{"name": "LLMServer", "autoscaling_config": {"min_replicas": 2, "max_replicas": 4}},
                       {"name": "Ingress"}]}
CONFIG = {"applications": [APP]}


class Stub(Base):
    def __init__(self, state_dir, leftover=None):
        self.app, self.canary_app = "serve_app", "serve_app-canary"
        self.history = History(state_dir)
        self.history.add(actor="t", kind="initial", note=None, config=copy.deepcopy(CONFIG), changed=["everything"],
                         status="good")
        self._task = self._deploying = self._canary = None
        self._serving = 1
        self.apps = {"serve_app": copy.deepcopy(APP)} | ({"serve_app-canary": leftover} if leftover else {})
        self._leftover_canary = leftover is not None
        self.applied: list[dict] = []
        self.fail_apply = 0
        self.judge = None

    def _details(self):
        return {"applications": {n: {"deployed_app_config": c, "status": "RUNNING"} for n, c in self.apps.items()}}

    async def _apply(self, config):
        if self.fail_apply:
            self.fail_apply -= 1
            raise RuntimeError("Serve is unreachable")
        self.applied.append(copy.deepcopy(config))
        self.apps = {a["name"]: a for a in config["applications"]}
        return time.time()

    async def _wait_ready(self, started, settings, app_name=None):
        return None

    async def _watch(self, settings):
        return None

    async def _judge_window(self, c, settings, cs):
        return await self.judge(c)


def _release(**engine):
    config = copy.deepcopy(CONFIG)
    config["applications"][0]["args"]["engine"] = engine
    return config


def _ingress_user_config(config):
    app = next(a for a in config["applications"] if a["name"] == "serve_app")
    return next(d for d in app["deployments"] if d["name"] == "Ingress").get("user_config")


async def _settle(c):
    while c._task is not None and not c._task.done():
        await asyncio.sleep(0.01)


def test_a_failing_canary_is_started_routed_then_removed_and_the_current_release_kept(tmp_path):
    async def run():
        c = Stub(tmp_path)

        async def judge(state):
            assert state["phase"] == "window"
            raise ReleaseFailed("canary error rate 100.0% (5/5) above 2.0%")

        c.judge = judge
        out = await c.deploy(_release(max_num_seqs=8), "admin", canary={"share": 0.25})
        assert out["canary"]["share"] == 0.25 and out["status"] == "deploying"
        await _settle(c)
        return c, out["release"]

    c, n = asyncio.run(run())
    rel = c.history.get(n)
    assert rel["status"] == "failed" and rel["kind"] == "canary" and "canary rolled back" in rel["outcome"]
    names = [[a["name"] for a in cfg["applications"]] for cfg in c.applied]
    # 1 canary up without traffic, 2 routed, 3 routing back, 4 canary removed.
    assert names == [["serve_app", "serve_app-canary"]] * 3 + [["serve_app"]]
    routes = [(_ingress_user_config(cfg) or {}).get("canary") for cfg in c.applied]
    assert routes[0] is None and routes[1] == {"app": "serve_app-canary", "share": 0.25, "release": n}
    assert routes[2] is None and routes[3] is None
    # The current release's own application is applied unchanged (labelled with its own number) throughout.
    assert all(_ingress_user_config(cfg)["release"] == "1" for cfg in c.applied)
    assert all(next(a for a in cfg["applications"] if a["name"] == "serve_app")["args"] == APP["args"]
               for cfg in c.applied)
    # The canary application: the new args, the LLM alone, sized to its share, logging kept.
    canary = next(a for a in c.applied[0]["applications"] if a["name"] == "serve_app-canary")
    assert canary["import_path"] == "serve_app.app:build_llm" and canary["args"]["engine"] == {"max_num_seqs": 8}
    assert canary["deployments"] == [{"name": "LLMServer", "num_replicas": 1}]
    assert canary["logging_config"] == {"encoding": "JSON"} and canary["route_prefix"] is None
    assert c._canary is None and c._deploying is None and c.history.last_good()["n"] == 1


def test_a_passing_canary_is_promoted_as_a_whole_release(tmp_path):
    async def run():
        c = Stub(tmp_path)

        async def judge(state):
            return "canary error rate 0.0% vs 0.0%"

        c.judge = judge
        n = (await c.deploy(_release(max_num_seqs=8), "admin", canary={}))["release"]
        await _settle(c)
        return c, n

    c, n = asyncio.run(run())
    rel = c.history.get(n)
    assert rel["status"] == "good" and rel["outcome"].startswith("canary passed")
    last = c.applied[-1]
    assert [a["name"] for a in last["applications"]] == ["serve_app"]
    assert last["applications"][0]["args"]["engine"] == {"max_num_seqs": 8}
    assert _ingress_user_config(last) == {"release": str(n)}
    assert c.history.last_good()["n"] == n and c._serving == n


def test_rollback_during_a_canary_aborts_it(tmp_path):
    async def run():
        c = Stub(tmp_path)
        started = asyncio.Event()

        async def judge(state):
            started.set()
            await asyncio.sleep(3600)

        c.judge = judge
        n = (await c.deploy(_release(max_num_seqs=8), "admin", canary={}))["release"]
        await asyncio.wait_for(started.wait(), 5)
        out = await c.rollback("admin")
        return c, n, out

    c, n, out = asyncio.run(run())
    assert out == {"release": n, "status": "failed", "changed": [], "aborted_canary": True}
    assert "aborted" in c.history.get(n)["outcome"]
    assert [a["name"] for a in c.applied[-1]["applications"]] == ["serve_app"]


def test_canary_counts_are_taken_only_for_the_running_canary_in_its_window(tmp_path):
    c = Stub(tmp_path)
    report = {PRIMARY: {"requests": 3, "errors": 0, "ttft_ms": [10.0]}, CANARY: {"requests": 1, "errors": 1}}
    c.canary_report(2, report)  # no canary out: ignored
    from serve_app.config.settings import CanarySettings
    from serve_app.release.canary import ArmStats

    c._canary = {"n": 2, "settings": CanarySettings(), "phase": "starting", PRIMARY: ArmStats(), CANARY: ArmStats()}
    c.canary_report(2, report)  # before the window: ignored
    c._canary["phase"] = "window"
    c.canary_report(3, report)  # another release: ignored
    c.canary_report(2, report)
    assert c._canary[PRIMARY].requests == 3 and c._canary[CANARY].errors == 1


def test_a_leftover_canary_is_removed_by_the_next_call_and_retried_after_a_failure(tmp_path):
    leftover = {"name": "serve_app-canary", "import_path": "serve_app.app:build_llm", "route_prefix": None, "args": {}}

    async def run():
        c = Stub(tmp_path, leftover=leftover)
        c.fail_apply = 2  # routing back and the removal both fail
        await c.health()  # /healthz: starts the removal
        await _settle(c)
        assert c._leftover_canary and "serve_app-canary" in c.apps
        await c.health()
        await _settle(c)
        return c

    c = asyncio.run(run())
    assert not c._leftover_canary and list(c.apps) == ["serve_app"]
    assert _ingress_user_config(c.applied[-1]) == {"release": "1"}


def test_a_deploy_waits_for_a_leftover_canary_instead_of_refusing(tmp_path):
    leftover = {"name": "serve_app-canary", "import_path": "serve_app.app:build_llm", "route_prefix": None, "args": {}}

    async def run():
        c = Stub(tmp_path, leftover=leftover)
        out = await c.deploy(_release(max_num_seqs=16), "admin")
        await _settle(c)
        return c, out["release"]

    c, n = asyncio.run(run())
    assert c.history.get(n)["status"] == "good" and list(c.apps) == ["serve_app"]


@pytest.mark.parametrize("overrides, field", [({"share": 1.5}, "share"), ({"bogus": 1}, "bogus")])
def test_invalid_canary_settings_are_refused_before_anything_is_applied(tmp_path, overrides, field):
    from serve_app.errors import InvalidRequest

    c = Stub(tmp_path)
    with pytest.raises(InvalidRequest, match=field):
        asyncio.run(c.deploy(_release(max_num_seqs=8), "admin", canary=overrides))
    assert c.applied == [] and len(c.history.list()) == 1


class Draining(Base):
    """Serve's details while a release's old replica drains: UPDATING until ``healthy_after`` seconds."""

    def __init__(self, healthy_after, graceful_s):
        self.app, self.t0 = "serve_app", time.time()
        self.healthy_after, self.graceful_s = healthy_after, graceful_s

    def _details(self):
        ready = time.time() - self.t0 >= self.healthy_after
        deployment = {"status": "HEALTHY" if ready else "UPDATING", "status_trigger": "CONFIG_UPDATE_STARTED",
                      "deployment_config": {"graceful_shutdown_timeout_s": self.graceful_s}}
        return {"applications": {"serve_app": {"status": "RUNNING" if ready else "DEPLOYING",
                                               "last_deployed_time_s": self.t0, "deployments": {"LLMServer": deployment}}}}


def test_a_release_is_given_its_replicas_drain_time_on_top_of_its_start_deadline():
    from serve_app.config.settings import AppSettings

    settings = AppSettings.model_validate({"releases": {"ready_timeout_s": 0.5}})
    # Still draining after the start deadline, within the replicas' graceful_shutdown_timeout_s: ready.
    c = Draining(healthy_after=1.5, graceful_s=3)
    asyncio.run(c._wait_ready(c.t0, settings))
    # The same without drain time (graceful_shutdown_timeout_s 0): the deadline holds as before.
    c = Draining(healthy_after=1.5, graceful_s=0)
    with pytest.raises(ReleaseFailed, match="within 0.5s"):
        asyncio.run(c._wait_ready(c.t0, settings))
    # Past both: failed, and the message says how long was allowed.
    c = Draining(healthy_after=30, graceful_s=1)
    with pytest.raises(ReleaseFailed, match=r"within 0.5s \(\+1s for replicas to drain\)"):
        asyncio.run(c._wait_ready(c.t0, settings))
