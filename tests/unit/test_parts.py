"""Per-deployment versions (serve_app/config/parts.py): what is handed to Serve keeps the application's code
version when only settings change, and changes a deployment's actor options exactly when its own part of the
settings changes; splitting is undone by ``join``; a deployment of a split config reads its part back."""

import copy
import json
from pathlib import Path

import pytest
import yaml
from ray.serve._private.deploy_utils import get_app_code_version
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from serve_app.app import build_app
from serve_app.config.loader import validate_serve_config
from serve_app.config.parts import ENV, SPLIT_KEY, deployment_settings, join, split

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _load(path):
    return yaml.safe_load(path.read_text())


def _app(config):
    return config["applications"][0]


def _options(config):
    return {d["name"]: d["ray_actor_options"] for d in _app(config)["deployments"]}


def _code_version(config):
    return get_app_code_version(ServeApplicationSchema.model_validate(_app(config)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_split_is_a_valid_serve_config_and_join_gives_the_original_back(path):
    config = _load(path)
    out = split(config)
    ServeDeploySchema.model_validate(out)
    assert set(_app(out)["args"]) == {SPLIT_KEY}
    names = {"Ingress", "LLMServer", "Agent", "Embedder", "VectorStore"}
    if _app(config)["args"].get("models"):
        names |= {"LLMServer-tiny-random-llama"}
    assert set(_options(out)) == names
    for name, options in _options(out).items():
        assert json.loads(options["runtime_env"]["env_vars"][ENV]), name
    assert join(out) == config
    assert split(out) == out  # already split: unchanged
    validate_serve_config(join(out))


def test_user_actor_options_are_kept_and_the_code_defaults_used_where_none_are_given():
    config = _load(ROOT / "configs/dev-cpu.yaml")
    out = _options(split(config))
    assert out["LLMServer"]["num_cpus"] == 1  # from the config file
    assert out["Agent"]["num_cpus"] == 0  # the deployment's own default (a bare runtime_env would drop it)


def _changed_deployments(old, new):
    a, b = _options(split(old)), _options(split(new))
    return {name for name in a if a[name] != b[name]}


def test_a_settings_change_restarts_only_the_deployments_that_read_it():
    base = _load(ROOT / "configs/dev-cpu.yaml")
    cases = {
        ("rag", "default_top_k", 3): {"Ingress"},
        ("prompts", "version", "p2"): {"Ingress", "Agent"},
        ("agent", "max_steps", 6): {"Ingress", "Agent"},
        ("engine", "max_model_len", 1024): {"Ingress", "LLMServer"},
        ("vector", "chunk_tokens", 150): {"Ingress", "Embedder", "VectorStore"},
        ("release", None, "r2"): {"Ingress"},
    }
    for (section, key, value), expected in cases.items():
        new = copy.deepcopy(base)
        if key is None:
            _app(new)["args"][section] = value
        else:
            _app(new)["args"].setdefault(section, {})[key] = value
        assert _changed_deployments(base, new) == expected, section
        # Settings only: the same application code version, so Serve does not rebuild the application.
        assert _code_version(split(new)) == _code_version(split(base)), section
    # Options of one deployment (Serve's own per-deployment options) touch that deployment alone.
    new = copy.deepcopy(base)
    next(d for d in _app(new)["deployments"] if d["name"] == "LLMServer")["max_ongoing_requests"] = 32
    assert _changed_deployments(base, new) == set()
    # Turning a component off changes what the application is made of: it is rebuilt.
    new = copy.deepcopy(base)
    _app(new)["args"]["agent"]["enabled"] = False
    assert _code_version(split(new)) != _code_version(split(base))


def test_a_change_of_one_model_restarts_that_models_deployment_only():
    base = _load(ROOT / "configs/multi-model.yaml")
    new = copy.deepcopy(base)
    _app(new)["args"]["models"][0]["engine"]["max_num_seqs"] = 8
    assert _changed_deployments(base, new) == {"Ingress", "LLMServer-tiny-random-llama"}
    assert _code_version(split(new)) == _code_version(split(base))
    new = copy.deepcopy(base)
    _app(new)["args"]["engine"]["max_model_len"] = 1024
    assert _changed_deployments(base, new) == {"Ingress", "LLMServer"}
    # The agent reads the model it uses: pointing it at the other model replaces it, no engine.
    new = copy.deepcopy(base)
    _app(new)["args"]["agent"]["model"] = "tiny-random-llama"
    assert _changed_deployments(base, new) == {"Ingress", "Agent"}
    # Adding or removing a model changes what the application is made of.
    new = copy.deepcopy(base)
    _app(new)["args"]["models"] = []
    assert _code_version(split(new)) != _code_version(split(base))


def test_a_default_written_out_is_no_change():
    base = _load(ROOT / "configs/dev-cpu.yaml")
    new = copy.deepcopy(base)
    _app(new)["args"]["engine"]["enforce_eager"] = True  # as written in the file
    _app(new)["args"]["agent"]["enabled"] = True  # the default, now written out
    _app(new)["args"]["vector"]["backend"] = "edge"
    assert _changed_deployments(base, new) == {"Ingress"}  # the Ingress keeps the args as written


def test_each_deployment_reads_its_part_from_its_environment(monkeypatch):
    config = _load(ROOT / "configs/dev-cpu.yaml")
    _app(config)["args"]["engine"]["max_num_seqs"] = 8
    _app(config)["args"]["ingress"]["max_n"] = 8
    options = _options(split(config))
    monkeypatch.setenv(ENV, options["LLMServer"]["runtime_env"]["env_vars"][ENV])
    llm = deployment_settings(None, "LLMServer")
    assert llm.engine.max_num_seqs == 8 and llm.engine.max_model_len == 2048
    assert set(type(llm).model_fields) == {"model", "engine", "lora"}  # its own type: the sections it reads
    monkeypatch.setenv(ENV, options["Ingress"]["runtime_env"]["env_vars"][ENV])
    assert deployment_settings(None, "Ingress").vector.collection == "documents"
    # Bound settings win (the plain form, and the canary's application).
    assert deployment_settings({"release": "x", "vector": {"enabled": False}}, "Ingress").release == "x"
    assert deployment_settings({"release": "x", "agent": {"max_steps": 5}}, "Agent").agent.max_steps == 5
    monkeypatch.delenv(ENV)
    with pytest.raises(RuntimeError, match=ENV):
        deployment_settings(None, "LLMServer")


def test_the_builder_takes_both_forms():
    config = _load(ROOT / "configs/dev-cpu.yaml")
    plain, splitted = build_app(_app(config)["args"]), build_app(_app(split(config))["args"])
    assert plain._bound_deployment.name == splitted._bound_deployment.name == "Ingress"
    with pytest.raises(ValueError, match=SPLIT_KEY):
        build_app({SPLIT_KEY: {"model": True}})
