"""Where the running plain config comes from (serve_app/release/controller.py): the release history, never
Serve. ``serve-app run`` records the config it started from (``started_from``): release 1 on a new history, the
next release when the file differs from the last good one, nothing when it is the same. A controller whose
history holds no release (the app deployed from the expanded form) reports none, refuses what needs a
current release, and takes the first submitted release whole, checked against the defaults."""

import asyncio
import copy

import pytest

from serve_app.errors import ServiceUnavailable
from serve_app.release.controller import Releases
from serve_app.release.guard import CodeChangeRefused
from serve_app.release.history import History
from tests.fakes.clock import FakeClock
from tests.fakes.serve_gateway import FakeServeGateway
from tests.names import APP as LLM_APP

pytestmark = pytest.mark.unit

APP = {"name": "serve_app", "route_prefix": "/", "import_path": "serve_app.app:build_app",
       "args": {"vector": {"enabled": False}}, "deployments": [{"name": "Ingress"}]}
CONFIG = {"applications": [APP]}


def _controller(state_dir):
    clock = FakeClock()
    gateway = FakeServeGateway({"serve_app": APP}, clock)
    return Releases("serve_app", History(state_dir), gateway, clock, clock.sleep), gateway


def test_the_config_a_run_started_from_is_release_1_and_a_changed_file_the_next(tmp_path):
    c, gw = _controller(tmp_path)
    assert c.history.list() == [] and c.state.serving is None
    assert c.started_from(copy.deepcopy(CONFIG)) == 1
    first = c.history.get(1)
    assert first["status"] == "good" and first["kind"] == "initial" and first["actor"] == "serve-app run"
    assert first["config"]["applications"][0]["args"] == APP["args"]
    assert c.started_from(copy.deepcopy(CONFIG)) == 1  # the same file again: nothing recorded
    changed = copy.deepcopy(CONFIG)
    changed["applications"][0]["args"]["release"] = "r2"
    # A controller of a later run over the same history: the new file is the next release.
    c2, _ = _controller(tmp_path)
    assert c2.state.serving == 1
    assert c2.started_from(changed) == 2 and c2.history.get(2)["changed"] == ["args.release"]
    assert c2.state.serving == 2 and gw.applied == []  # recorded, not applied: serve-app run deploys it


def test_without_a_recorded_release_the_first_one_is_taken_whole_and_checked_against_the_defaults(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        status = await c.status()
        assert status["current_release"] is None and status["last_good_release"] is None
        assert set(status["applications"]) == {"serve_app", LLM_APP, "serve_app-agent"}
        with pytest.raises(ServiceUnavailable, match="no release yet"):
            await c.scale("Ingress", 2, None, "admin")
        risky = copy.deepcopy(CONFIG)
        risky["applications"][0]["args"]["engine"] = {"factory": "tests.fakes.engine:turns_unhealthy"}
        with pytest.raises(CodeChangeRefused, match="engine.factory"):
            await c.deploy(risky, "admin")
        out = await c.deploy(copy.deepcopy(CONFIG), "admin")
        await asyncio.wait([c.background])
        return c, gw, out

    c, gw, out = asyncio.run(run())
    assert out["release"] == 1 and out["changed"] == ["everything"]
    assert c.history.get(1)["status"] == "good" and len(gw.applied) == 1


def test_the_first_release_keeps_the_files_other_applications(tmp_path):
    c, _ = _controller(tmp_path)
    other = {"name": "other", "route_prefix": "/other", "import_path": "serve_app.app:build_app",
             "args": {"model": {"enabled": False}}}
    c.started_from({"applications": [APP, other]})
    assert [a["name"] for a in c.history.get(1)["config"]["applications"]] == ["other", "serve_app"]
