"""LoRA adapters without an engine: the folder checks that come before anything is loaded
(serve_app/llm/adapters.py), the settings that name adapters, how they are handed to Serve (user_config, so
no restart), the releases that load and unload them, and the release controller's trial load."""

import asyncio
import copy
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from serve_app.config.apps import expand
from serve_app.config.settings import AppSettings
from serve_app.errors import Conflict, InvalidRequest, NotFound
from serve_app.llm.adapters import adapter_path, check_adapter, check_shapes
from serve_app.release.controller import Releases
from serve_app.release.history import History
from serve_app.release.plan import new_adapters, with_adapter, without_adapter
from tests.fakes.clock import FakeClock
from tests.fakes.serve_gateway import FakeServeGateway
from tests.names import APP, DEPLOYMENT

pytestmark = pytest.mark.unit

BASE = "SmolLM2-135M-Instruct"
MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
         "head_dim": 32, "num_hidden_layers": 2}
NAMES = {BASE, "default"}


def _adapter(root, folder="a", rank=4, base=f"/models/{BASE}", hidden=64, layers=2, **config):
    """A peft-shaped LoRA adapter folder (q and v projections) for a model shaped like MODEL."""
    path = root / folder
    path.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": rank, "base_model_name_or_path": base, "target_modules": ["q_proj", "v_proj"]}
    (path / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    out = {"q_proj": 64, "v_proj": 32}
    tensors = {}
    for layer in range(layers):
        for module, fan_out in out.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.zeros(rank, hidden)
            tensors[f"{key}.lora_B.weight"] = torch.zeros(fan_out, rank)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def _check(root, folder, max_rank=8):
    path = adapter_path(root, folder)
    info = check_adapter(path, folder, NAMES, max_rank)
    check_shapes(path, folder, MODEL)
    return info


def test_a_good_adapter_passes_every_check(tmp_path):
    _adapter(tmp_path / "root", "team/a")
    info = _check(tmp_path / "root", "team/a")
    assert info["rank"] == 4 and info["base_model"] == BASE
    _adapter(tmp_path / "root", "hub", base=f"HuggingFaceTB/{BASE}")  # a hub id names the same model
    assert _check(tmp_path / "root", "hub")["base_model"] == BASE


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("dotdot", "without '..'"),
    ("absolute", "without '..'"),
    ("symlink_out", "outside the adapter root"),
    ("file_symlink_out", "outside the adapter root"),
    ("pickled", "pickled weights are refused"),
    ("code", "holds no code"),
    ("not_lora", "not a LoRA adapter"),
    ("other_peft", "not a LoRA adapter"),
    ("no_safetensors", "only safetensors"),
    ("rank", "above this model's maximum 8"),
    ("other_base", "for the base model 'OtherModel'"),
    ("no_base", "does not say which base model"),
    ("other_shapes", "made for another model"),
    ("more_layers", "this model has 2 layers"),
    ("a_file", "is not a folder"),
])
def test_bad_adapters_are_refused_with_the_reason(tmp_path, case, message):
    root = tmp_path / "root"
    root.mkdir()
    outside = _adapter(tmp_path, "outside")
    folder = "a"
    if case == "missing":
        folder = "nope"
    elif case == "dotdot":
        folder = "../outside"
    elif case == "absolute":
        folder = str(outside)
    elif case == "symlink_out":
        os.symlink(outside, root / "a")
    elif case == "file_symlink_out":
        path = _adapter(root)
        (path / "adapter_model.safetensors").unlink()
        os.symlink(outside / "adapter_model.safetensors", path / "adapter_model.safetensors")
    elif case == "pickled":
        (_adapter(root) / "adapter_model.bin").write_bytes(b"\x80\x04")
    elif case == "code":
        (_adapter(root) / "modeling.py").write_text("import os")
    elif case == "not_lora":
        (root / "a").mkdir()
        (root / "a" / "config.json").write_text("{}")
    elif case == "other_peft":
        _adapter(root, peft_type="IA3")
    elif case == "no_safetensors":
        (_adapter(root) / "adapter_model.safetensors").unlink()
    elif case == "rank":
        _adapter(root, rank=16)
    elif case == "other_base":
        _adapter(root, base="org/OtherModel")
    elif case == "no_base":
        _adapter(root, base=None)
    elif case == "other_shapes":
        _adapter(root, hidden=576)
    elif case == "more_layers":
        _adapter(root, layers=3)
    elif case == "a_file":
        (root / "a").write_text("x")
    with pytest.raises(InvalidRequest) as err:
        _check(root, folder)
    assert message in str(err.value) and err.value.param == "path"
    if case != "absolute":  # (that one repeats the path the client sent)
        assert str(tmp_path) not in str(err.value)  # no path of the server in what the client reads


def test_adapter_names_are_checked_against_every_served_name():
    ok = AppSettings.model_validate({"lora": {"adapters": {"a": "a"}}, "models": [
        {"model": {"source": "tiny"}, "lora": {"adapters": {"b": "b"}}}]})
    assert ok.adapters() == {"a": BASE, "b": "tiny-random-llama"}
    for args, message in [
        ({"lora": {"adapters": {BASE: "x"}}}, "already served by model"),
        ({"lora": {"adapters": {"all-MiniLM-L6-v2": "x"}}}, "already served by vector.embedder_name"),
        ({"lora": {"adapters": {"a": "x"}}, "models": [{"model": {"source": "tiny"}, "lora": {"adapters": {"a": "y"}}}]},
         "already served by lora.adapters"),
        ({"lora": {"max_adapters": 1, "adapters": {"a": "x", "b": "y"}}}, "more than max_adapters"),
        ({"lora": {"adapters": {"a b": "x"}}}, "not a valid model name"),
        ({"lora": {"adapters": {"a": "../x"}}}, "without '..'"),
        ({"lora": {"max_rank": 7}}, "max_rank"),
    ]:
        with pytest.raises(ValueError, match=message):
            AppSettings.model_validate(args)


def _config(adapters=None, tiny_lora=False):
    args = {"lora": {"max_rank": 8, **({"adapters": adapters} if adapters is not None else {})},
            "models": [{"model": {"source": "tiny"}, **({"lora": {}} if tiny_lora else {})}]}
    return {"applications": [{"name": "serve_app", "route_prefix": "/", "import_path": "serve_app.app:build_app",
                              "args": args, "deployments": [{"name": "Ingress", "user_config": {"release": "2"}}]}]}


def _apps(config):
    return {a["name"]: a for a in expand(config)["applications"]}


def _deps(app):
    return {d["name"]: d for d in app.get("deployments") or []}


def test_adapters_reach_the_replicas_as_user_config_so_a_change_restarts_nothing():
    one, two = _config({"a": "a"}), _config({"a": "a", "b": "team/b"})
    a1, a2 = _apps(one), _apps(two)
    # What Serve rebuilds on (each application's args) is the same; only user_config (reconfigure) differs.
    assert set(a1) == set(a2)
    for name in a1:
        assert a1[name]["args"] == a2[name]["args"], name
    llm, ingress = _deps(a2[APP]), _deps(a2["serve_app"])
    assert llm[DEPLOYMENT]["user_config"] == {"adapters": {"a": "a", "b": "team/b"}}
    assert ingress["Ingress"]["user_config"] == {"release": "2", "adapters": {BASE: {"a": "a", "b": "team/b"}}}
    assert "team/b" not in json.dumps(a2["serve_app"]["args"]) and "team/b" not in json.dumps(a2[APP]["args"])
    assert "user_config" not in _deps(a2["serve_app-LLMServer-tiny-random-llama"])["LLMServer-tiny-random-llama"]  # LoRA off
    assert one == _config({"a": "a"})  # the plain config untouched


def test_load_and_unload_plan_a_release_of_the_adapters_alone(tmp_path):
    config = _config({"a": "a"})
    app, model = with_adapter(config, "serve_app", None, "b", "b")
    assert model == BASE and app["args"]["lora"]["adapters"] == {"a": "a", "b": "b"}
    assert config["applications"][0]["args"]["lora"]["adapters"] == {"a": "a"}  # the running config untouched
    new = AppSettings.model_validate(app["args"])
    assert new_adapters(new, AppSettings.model_validate(config["applications"][0]["args"])) == [(DEPLOYMENT, "b", "b")]
    app, model = without_adapter(config, "serve_app", "a")
    assert app["args"]["lora"]["adapters"] == {}
    with pytest.raises(Conflict):
        with_adapter(config, "serve_app", None, "a", "other")
    with pytest.raises(NotFound):
        with_adapter(config, "serve_app", "nope", "b", "b")
    with pytest.raises(InvalidRequest, match="LoRA is off"):
        with_adapter(config, "serve_app", "tiny-random-llama", "b", "b")
    with pytest.raises(InvalidRequest, match="without '..'"):
        with_adapter(config, "serve_app", None, "b", "../b")
    with pytest.raises(NotFound):
        without_adapter(config, "serve_app", "nope")


def _controller(state_dir, config):
    clock = FakeClock()
    history = History(state_dir)
    history.add(actor="t", kind="initial", note=None, config=copy.deepcopy(config), changed=["everything"],
                status="good")
    gateway = FakeServeGateway({"serve_app": config["applications"][0]}, clock)
    return Releases("serve_app", history, gateway, clock, clock.sleep), gateway


def test_a_load_is_tried_on_a_replica_first_and_refused_there_without_a_release(tmp_path):
    async def run():
        c, gw = _controller(tmp_path, _config({}))

        async def on_call(app, deployment, method, folder):
            if folder == "bad":
                raise InvalidRequest("the adapter does not load into this model", "path")
            return {"rank": 4}

        gw.on_call = on_call
        with pytest.raises(InvalidRequest, match="does not load"):
            await c.load_adapter(None, "b", "bad", "admin")
        assert len(c.history.list()) == 1 and not gw.applied  # nothing recorded, nothing applied
        out = await c.load_adapter(None, "a", "good", "admin")
        await c.background
        return c, gw, out

    c, gw, out = asyncio.run(run())
    rel = c.history.get(out["release"])
    assert rel["status"] == "good" and rel["kind"] == "adapter-load" and rel["changed"] == ["args.lora"]
    # Tried before the release, and again by the rollout before it counted as good.
    assert [call[1:] for call in gw.calls] == [(DEPLOYMENT, "trial_adapter", "bad"),
                                               (DEPLOYMENT, "trial_adapter", "good"),
                                               (DEPLOYMENT, "trial_adapter", "good")]
    assert c.adapters() == [{"name": "a", "model": BASE, "folder": "good"}]


def test_a_release_whose_new_adapter_does_not_load_is_rolled_back(tmp_path):
    async def run():
        c, gw = _controller(tmp_path, _config({}))

        async def on_call(app, deployment, method, folder):
            raise InvalidRequest("gone", "path")

        gw.on_call = on_call
        out = await c.deploy(_config({"a": "a"}), "admin")  # e.g. a rollback to a release whose folder is gone
        await c.background
        return c, out

    c, out = asyncio.run(run())
    rel = c.history.get(out["release"])
    assert rel["status"] == "failed" and f"the adapter 'a' ({DEPLOYMENT}) does not load" in rel["outcome"]
    assert c.history.get(rel["rolled_back_to"])["status"] == "good"
