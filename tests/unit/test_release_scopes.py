"""Releases scoped to one model or component, without Ray: the config partitioned into sections and put back;
a scoped release that touches another scope refused naming the field; releases of two models at once, each
applying only its own section and rolled back alone; a second release of one model refused; a model added
(started before the ingress routes to it) and removed (the ingress first, then its application); canaries of
two models at once; the running config composed again by a restarted controller; a rollback of one model.

Serve is the fake gateway (tests/fakes/serve_gateway.py) and time an injected clock, as in
tests/unit/test_release_controller.py; the same flows against Serve: tests/release/test_releases_models.py.
"""

import asyncio
import copy
from pathlib import Path

import pytest
import yaml

from serve_app.config.loader import validate_app_args
from serve_app.errors import Conflict, InvalidRequest, NotFound
from serve_app.release.canary import CANARY, PRIMARY
from serve_app.release.controller import Releases
from serve_app.release.history import History
from serve_app.release.scopes import check_scope, join, sections, splice
from tests.fakes.clock import FakeClock
from tests.fakes.serve_gateway import FakeServeGateway

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIRST, SECOND, THIRD = "SmolLM2-135M-Instruct", "tiny-random-llama", "tiny-2"
FIRST_APP, SECOND_APP = f"serve_app-LLMServer-{FIRST}", f"serve_app-LLMServer-{SECOND}"
APP = {"name": "serve_app", "route_prefix": "/", "import_path": "serve_app.app:build_app",
       "args": {"vector": {"enabled": False}, "models": [{"model": {"source": "tiny"}}]},
       "deployments": [{"name": f"LLMServer-{FIRST}", "num_replicas": 1}, {"name": f"LLMServer-{SECOND}", "num_replicas": 1},
                       {"name": "Ingress"}]}
CONFIG = {"applications": [APP]}


def _controller(state_dir) -> tuple[Releases, FakeServeGateway]:
    clock = FakeClock()
    history = History(state_dir)
    history.add(actor="t", kind="initial", note=None, config=copy.deepcopy(CONFIG), changed=["everything"],
                status="good")
    gateway = FakeServeGateway({"serve_app": APP}, clock)
    return Releases("serve_app", history, gateway, clock, clock.sleep), gateway


def _with(**changes) -> dict:
    """CONFIG with the first model's engine (``first``) or the second's (``second``) changed."""
    config = copy.deepcopy(CONFIG)
    args = config["applications"][0]["args"]
    if "first" in changes:
        args["engine"] = changes["first"]
    if "second" in changes:
        args["models"][0]["engine"] = changes["second"]
    return config


async def _settle(c: Releases) -> None:
    while any(not t.done() for t in c.tasks.values()):
        await asyncio.wait([t for t in c.tasks.values() if not t.done()])


def _apps(config: dict) -> dict:
    from serve_app.config.apps import expand

    return {a["name"]: a for a in expand(config)["applications"]}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_put_back_together_from_its_sections(path):
    entry = yaml.safe_load(path.read_text())["applications"][0]
    assert join(sections(entry)) == entry
    for scope in sections(entry):
        if scope != "app":
            assert splice(entry, scope, entry) == entry


def test_a_scoped_release_may_change_only_its_scope_and_says_which_field_it_changed_else():
    base = APP
    second = _with(second={"seed": 7})["applications"][0]
    check_scope(f"model:{SECOND}", second, [base])
    with pytest.raises(InvalidRequest) as err:
        check_scope(f"model:{FIRST}", second, [base])
    assert err.value.param == f"args.models[{SECOND!r}].engine.seed" and SECOND in err.value.message
    with pytest.raises(InvalidRequest) as err:
        check_scope("component:ingress", _with(first={"seed": 1})["applications"][0], [base])
    assert err.value.param == "args.engine.seed"
    with pytest.raises(NotFound) as missing:
        check_scope("model:nope", base, [base])
    assert missing.value.param == "model"
    # Another scope's section may be the one in flight instead of the last good one (a release running).
    check_scope(f"model:{FIRST}", second, [base, second])


def test_two_models_release_at_once_and_a_failing_one_is_rolled_back_alone(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        both_out = asyncio.Event()  # the first model's watch waits until the second's release is out too

        async def on_probe(app, deployment):
            if app == FIRST_APP:
                await both_out.wait()
            if app == SECOND_APP and '"seed": 9' in str(gw.apps[SECOND_APP]["args"]).replace("'", '"'):
                raise RuntimeError("unhealthy")

        gw.on_probe = on_probe
        a = await c.deploy(_with(first={"seed": 1}), "admin", model=FIRST)
        b = await c.deploy(_with(second={"seed": 9}), "admin", model=SECOND)
        both = dict(c.state.deploying)  # what /admin/status reports as deploying_by_scope
        with pytest.raises(Conflict):  # a second release of one model
            await c.deploy(_with(second={"seed": 2}), "admin", model=SECOND)
        with pytest.raises(Conflict):  # the whole app while models are releasing
            await c.deploy(CONFIG, "admin")
        assert both == {f"model:{FIRST}": a["release"], f"model:{SECOND}": b["release"]}
        both_out.set()
        await _settle(c)
        return c, gw, a["release"], b["release"]

    c, gw, a, b = asyncio.run(run())
    assert c.history.get(a)["status"] == "good" and c.history.get(a)["scope"] == f"model:{FIRST}"
    failed = c.history.get(b)
    assert failed["status"] == "failed" and failed["scope"] == f"model:{SECOND}" and failed["rolled_back_to"]
    back = c.history.get(failed["rolled_back_to"])
    assert back["status"] == "good" and back["scope"] == f"model:{SECOND}"
    # Every apply carried the other model's section as it was: the first model's new engine stays after the
    # second's rollback, and the second model's engine is back to none.
    last = _apps(gw.applied[-1])
    assert last[FIRST_APP]["args"]["engine"]["seed"] == 1
    assert last[SECOND_APP]["args"]["engine"]["seed"] == 0
    # The first model's application was applied with the same config from its release on: never rebuilt by
    # the second model's release or rollback.
    firsts = [_apps(cfg)[FIRST_APP] for cfg in gw.applied]
    assert all(f == firsts[0] for f in firsts)
    # The running config, composed by a controller started again over the same history.
    again = Releases("serve_app", c.history, gw, gw.clock, gw.clock.sleep)
    composed = again._good()["config"]["applications"][0]["args"]
    assert composed["engine"] == {"seed": 1} and "engine" not in composed["models"][0]


def test_a_model_is_added_before_it_is_routed_and_removed_after_routing_stops(tmp_path):
    third_app = f"serve_app-LLMServer-{THIRD}"

    async def run():
        c, gw = _controller(tmp_path)
        config = copy.deepcopy(CONFIG)
        config["applications"][0]["args"]["models"].append({"model": {"source": "tiny", "served_name": THIRD}})
        with pytest.raises(InvalidRequest) as err:  # adding under another model's scope
            await c.deploy(config, "admin", model=SECOND)
        assert err.value.param == "model"
        added = await c.deploy(config, "admin", model=THIRD)
        await _settle(c)
        n_add = len(gw.applied)
        with pytest.raises(InvalidRequest) as err:  # RAG uses the first model while rag.model is unset
            await c.remove_model(FIRST, "admin")
        assert err.value.param == "rag.model"
        with pytest.raises(NotFound):
            await c.remove_model("nope", "admin")
        removed = await c.remove_model(THIRD, "admin")
        await _settle(c)
        return c, gw, added["release"], removed["release"], n_add

    c, gw, added, removed, n_add = asyncio.run(run())
    assert c.history.get(added)["status"] == "good" and c.history.get(removed)["status"] == "good"
    steps = [_apps(cfg) for cfg in gw.applied]
    # Added: its application first, the ingress unchanged; then the ingress that routes to it.
    assert third_app in steps[0] and THIRD not in str(steps[0]["serve_app"]["args"])
    assert THIRD in str(steps[1]["serve_app"]["args"]) and steps[1][third_app] == steps[0][third_app]
    # Removed: the ingress without it while its application still runs, then the application deleted.
    assert THIRD not in str(steps[n_add]["serve_app"]["args"]) and third_app in steps[n_add]
    assert third_app not in steps[n_add + 1] and len(steps) == n_add + 2
    assert c.history.get(removed)["kind"] == "remove-model"
    assert [m.get("model") for m in c._good()["config"]["applications"][0]["args"]["models"]] == [{"source": "tiny"}]


def test_the_first_model_is_removed_like_any_other_once_nothing_uses_it_by_default(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        for component, key in (("ingress", "rag"), ("agent", "agent")):  # RAG and the agent name their model
            config = copy.deepcopy(c._good()["config"])
            config["applications"][0]["args"][key] = {"model": SECOND}
            await c.deploy(config, "admin", component=component)
            await _settle(c)
        n_before = len(gw.applied)
        removed = await c.remove_model(FIRST, "admin")
        await _settle(c)
        with pytest.raises(Conflict) as err:  # the one model left
            await c.remove_model(SECOND, "admin")
        assert err.value.param == "model"
        return c, gw, removed["release"], n_before

    c, gw, removed, n_before = asyncio.run(run())
    assert c.history.get(removed)["status"] == "good"
    steps = [_apps(cfg) for cfg in gw.applied[n_before:]]
    # Routing stops first, then the application goes; the second model's application is never rebuilt: it is
    # named by its model, not by its place, which it now takes as the first model.
    served = [validate_app_args(step["serve_app"]["args"]).model_names() for step in steps]
    assert FIRST_APP in steps[0] and served[0] == [SECOND] and FIRST_APP not in steps[-1]
    assert (FIRST_APP, [f"LLMServer-{FIRST}"]) in gw.forgotten  # its prefix router's tree actor removed with it
    assert all(step[SECOND_APP] == _apps(gw.applied[0])[SECOND_APP] for step in steps)
    args = c._good()["config"]["applications"][0]["args"]
    assert args["model"] == {"source": "tiny"} and args["models"] == []
    assert [d["name"] for d in c._good()["config"]["applications"][0]["deployments"]] == [f"LLMServer-{SECOND}",
                                                                                            "Ingress"]


def test_canaries_of_two_models_are_judged_each_on_its_own_traffic(tmp_path):
    canaries = {FIRST: f"{FIRST_APP}-canary", SECOND: f"{SECOND_APP}-canary"}

    async def run():
        c, gw = _controller(tmp_path)
        reported = set()
        second_out = asyncio.Event()  # the first canary's window waits for the second canary's to open

        async def on_probe(app, deployment):
            if app == canaries[SECOND]:
                second_out.set()
            elif app == canaries[FIRST]:
                await second_out.wait()
            for model, name in canaries.items():
                run_ = next((r for r in c.state.canaries.values() if r.model == model), None)
                if app == name and run_ is not None and run_.phase == "window" and model not in reported:
                    errors = 10 if model == SECOND else 0  # the second model's canary fails its requests
                    c.canary_report(run_.n, {PRIMARY: {"requests": 10, "errors": 0},
                                             CANARY: {"requests": 10, "errors": errors}})
                    reported.add(model)

        gw.on_probe = on_probe
        a = await c.deploy(_with(first={"seed": 3}), "admin", model=FIRST, canary={"min_requests": 5})
        b = await c.deploy(_with(second={"seed": 4}), "admin", model=SECOND, canary={"min_requests": 5})
        await _settle(c)
        return c, gw, a["release"], b["release"]

    c, gw, a, b = asyncio.run(run())
    assert c.history.get(a)["status"] == "good" and c.history.get(a)["outcome"].startswith("canary passed")
    assert c.history.get(b)["status"] == "failed" and "canary rolled back" in c.history.get(b)["outcome"]
    # At some point both canaries ran and both models' shares were routed.
    routed = [set((_ingress(cfg) or {}).get("canaries") or {}) for cfg in gw.applied]
    assert {FIRST, SECOND} in routed
    last = _apps(gw.applied[-1])
    assert not any(name.endswith("-canary") for name in last)
    assert last[FIRST_APP]["args"]["engine"]["seed"] == 3 and last[SECOND_APP]["args"]["engine"]["seed"] == 0


def _ingress(config):
    app = next(a for a in config["applications"] if a["name"] == "serve_app")
    return next(d for d in app["deployments"] if d["name"] == "Ingress").get("user_config")


def test_a_model_is_rolled_back_to_its_previous_release_and_nothing_else(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        first = await c.deploy(_with(second={"seed": 5}), "admin", model=SECOND)
        await _settle(c)
        other = await c.deploy(_with(first={"seed": 6}, second={"seed": 5}), "admin", model=FIRST)
        await _settle(c)
        back = await c.rollback("admin", model=SECOND)
        await _settle(c)
        with pytest.raises(NotFound):  # no earlier release of the ingress than the first one
            await c.rollback("admin", component="ingress")
        return c, first["release"], other["release"], back["release"]

    c, first, other, back = asyncio.run(run())
    assert c.history.get(back)["status"] == "good" and c.history.get(back)["scope"] == f"model:{SECOND}"
    args = c._good()["config"]["applications"][0]["args"]
    assert "engine" not in args["models"][0]  # the second model as before release `first`
    assert args["engine"] == {"seed": 6}  # the first model's later release kept


def test_a_scoped_release_of_the_file_the_app_started_from_is_compared_as_stored(tmp_path):
    """The file's top-level logging_config is kept in the stored application: a scoped release of the same
    file with one model changed agrees with it everywhere else."""
    file = {"logging_config": {"encoding": "JSON"}, "applications": [copy.deepcopy(APP)]}

    async def run():
        c, gw = _controller(tmp_path)
        c.started_from(copy.deepcopy(file))
        changed = copy.deepcopy(file)
        changed["applications"][0]["args"]["models"][0]["engine"] = {"seed": 2}
        out = await c.deploy(changed, "admin", model=SECOND)
        await _settle(c)
        return c, out["release"]

    c, n = asyncio.run(run())
    assert c.history.get(n)["status"] == "good"


def test_two_releases_of_one_model_sent_at_once_one_is_refused(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        outcomes = await asyncio.gather(c.deploy(_with(second={"seed": 1}), "a", model=SECOND),
                                        c.deploy(_with(second={"seed": 2}), "b", model=SECOND),
                                        return_exceptions=True)
        await _settle(c)
        return outcomes

    outcomes = asyncio.run(run())
    assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "dict"], outcomes


def test_a_model_rolled_back_to_a_numbered_release_keeps_the_others_later_changes(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        await c.deploy(_with(second={"seed": 5}), "admin", model=SECOND)
        await _settle(c)
        await c.deploy(_with(first={"seed": 6}, second={"seed": 5}), "admin", model=FIRST)
        await _settle(c)
        back = await c.rollback("admin", to=1, model=SECOND)
        await _settle(c)
        return c, back["release"]

    c, n = asyncio.run(run())
    assert c.history.get(n)["status"] == "good"
    args = c._good()["config"]["applications"][0]["args"]
    assert "engine" not in args["models"][0] and args["engine"] == {"seed": 6}


def test_a_component_release_that_turns_the_component_off_probes_nothing_of_it(tmp_path):
    async def run():
        c, gw = _controller(tmp_path)
        off = copy.deepcopy(CONFIG)
        off["applications"][0]["args"]["agent"] = {"enabled": False}
        out = await c.deploy(off, "admin", component="agent")
        await _settle(c)
        return c, gw, out["release"]

    c, gw, n = asyncio.run(run())
    assert c.history.get(n)["status"] == "good", c.history.get(n)["outcome"]
    assert "serve_app-agent" not in gw.apps and not [p for p in gw.probes if p[1] == "Agent"][-1:]
