"""One Serve application per component (serve_app/config/apps.py): a plain config expands into a valid
multi-application Serve config; a settings change changes the args (so Serve's code version) of exactly the
applications whose components read it; each builder reads its own application's args."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.serve._private.deploy_utils import get_app_code_version
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from serve_app.app import build_agent, build_app, build_ingress, build_llm, build_retrieval
from serve_app.config.apps import code_version, component_apps, expand
from serve_app.config.components import AgentAppSettings, LLMAppSettings, component_app
from serve_app.config.loader import ConfigError, validate_app_args
from tests.names import APP, DEPLOYMENT

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
APPS = ["serve_app", APP, "serve_app-retrieval", "serve_app-agent"]


def _load(path):
    return yaml.safe_load(path.read_text())


def _app(config):
    return config["applications"][0]


def _versions(config):
    """Serve's own code version of each application of the expanded config (what decides a rebuild)."""
    return {a["name"]: get_app_code_version(ServeApplicationSchema.model_validate(a))
            for a in expand(config)["applications"]}


def _rebuilt(old, new):
    a, b = _versions(old), _versions(new)
    return {name for name in set(a) | set(b) if a.get(name) != b.get(name)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_expands_into_one_application_per_component(path):
    config = _load(path)
    out = expand(config)
    ServeDeploySchema.model_validate(out)
    names = [a["name"] for a in out["applications"]]
    models = ["serve_app-LLMServer-tiny-random-llama"] if _app(config)["args"].get("models") else []
    assert names == APPS[:2] + models + APPS[2:]
    assert set(names) == set(component_apps("serve_app", validate_app_args(_app(config)["args"])))
    # Only the ingress has an HTTP route; every application gets the plain one's runtime_env.
    assert [a["route_prefix"] for a in out["applications"]] == ["/"] + [None] * (len(names) - 1)
    assert all(a["runtime_env"] == _app(config)["runtime_env"] for a in out["applications"])
    # Each deployment's options land in its own application.
    for a in out["applications"]:
        for d in a.get("deployments") or []:
            assert component_app("serve_app", d["name"]) == a["name"]
    assert expand(config) == out and config == _load(path)  # pure: the plain config untouched


def test_a_settings_change_rebuilds_only_the_applications_that_read_it():
    base = _load(ROOT / "configs/dev-cpu.yaml")
    cases = {
        ("rag", "default_top_k", 3): {"serve_app"},
        ("prompts", "version", "p2"): {"serve_app", "serve_app-agent"},
        ("agent", "max_steps", 6): {"serve_app", "serve_app-agent"},
        ("engine", "max_num_seqs", 8): {APP},
        # The one engine setting the ingress reads (/v1/models reports it).
        ("engine", "max_model_len", 1024): {"serve_app", APP},
        ("vector", "chunk_tokens", 150): {"serve_app", "serve_app-retrieval"},
        ("release", None, "r2"): {"serve_app"},
    }
    for (section, key, value), expected in cases.items():
        new = copy.deepcopy(base)
        if key is None:
            _app(new)["args"][section] = value
        else:
            _app(new)["args"].setdefault(section, {})[key] = value
        assert _rebuilt(base, new) == expected, section
    # Options of one deployment (Serve's own per-deployment options) rebuild nothing.
    new = copy.deepcopy(base)
    next(d for d in _app(new)["deployments"] if d["name"] == DEPLOYMENT)["max_ongoing_requests"] = 32
    assert _rebuilt(base, new) == set()
    # Turning the agent off removes its application, and the ingress (which routes to it) is rebuilt.
    new = copy.deepcopy(base)
    _app(new)["args"]["agent"]["enabled"] = False
    assert _rebuilt(base, new) == {"serve_app", "serve_app-agent"}
    assert "serve_app-agent" not in [a["name"] for a in expand(new)["applications"]]


def test_a_change_of_one_models_engine_changes_exactly_that_models_application():
    base = _load(ROOT / "configs/multi-model.yaml")
    new = copy.deepcopy(base)
    _app(new)["args"]["models"][0]["engine"]["max_num_seqs"] = 8
    assert _rebuilt(base, new) == {"serve_app-LLMServer-tiny-random-llama"}
    old_apps = {a["name"]: a for a in expand(base)["applications"]}
    new_apps = {a["name"]: a for a in expand(new)["applications"]}
    assert [n for n in old_apps if old_apps[n] != new_apps[n]] == ["serve_app-LLMServer-tiny-random-llama"]
    assert code_version(old_apps["serve_app"]) == code_version(new_apps["serve_app"])
    assert code_version(old_apps["serve_app-LLMServer-tiny-random-llama"]) != \
        code_version(new_apps["serve_app-LLMServer-tiny-random-llama"])
    # The agent reads the model it uses: pointing it at the other model rebuilds it and the ingress, no engine.
    new = copy.deepcopy(base)
    _app(new)["args"]["agent"]["model"] = "tiny-random-llama"
    assert _rebuilt(base, new) == {"serve_app", "serve_app-agent"}
    agent = next(a for a in expand(new)["applications"] if a["name"] == "serve_app-agent")
    assert AgentAppSettings.model_validate(agent["args"]).llm_app == "serve_app-LLMServer-tiny-random-llama"
    # Removing a model removes its application.
    new = copy.deepcopy(base)
    _app(new)["args"]["models"] = []
    assert _rebuilt(base, new) == {"serve_app", "serve_app-LLMServer-tiny-random-llama"}


def test_a_default_written_out_is_no_engine_change():
    base = _load(ROOT / "configs/dev-cpu.yaml")
    new = copy.deepcopy(base)
    _app(new)["args"]["engine"]["dtype"] = "bfloat16"  # the default, now written out
    _app(new)["args"]["vector"]["backend"] = "edge"
    assert _rebuilt(base, new) <= {"serve_app"}  # the ingress keeps its args as written


def test_each_builder_reads_its_own_applications_args():
    config = _load(ROOT / "configs/multi-model.yaml")
    apps = {a["name"]: a for a in expand(config)["applications"]}
    assert build_ingress(apps["serve_app"]["args"])._bound_deployment.name == "Ingress"
    tiny = apps["serve_app-LLMServer-tiny-random-llama"]
    root = build_llm(tiny["args"])._bound_deployment
    llm = root.init_args[0]._bound_deployment  # the LLM deployment is its root's child (its own router)
    assert root.name == "LLMRoot" and llm.name == "LLMServer-tiny-random-llama"
    assert LLMAppSettings.model_validate(llm.init_args[0]).engine.max_num_seqs == 16
    assert build_retrieval(apps["serve_app-retrieval"]["args"])._bound_deployment.name == "VectorStore"
    assert build_agent(apps["serve_app-agent"]["args"])._bound_deployment.name == "Agent"
    # Another application's args are refused, naming the field.
    with pytest.raises(ConfigError, match="vector"):
        build_llm(apps["serve_app-retrieval"]["args"])
    # The plain form is expanded first; handed to Serve as it is, the builder says how.
    with pytest.raises(ConfigError, match="serve-app expand"):
        build_app(_app(config)["args"])


def test_serve_app_expand_writes_what_serve_deploy_takes(tmp_path):
    from serve_app.cli import main

    out = tmp_path / "serve.yaml"
    assert main(["expand", str(ROOT / "configs/dev-cpu.yaml"), "-o", str(out)]) == 0
    expanded = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(expanded)
    assert [a["name"] for a in expanded["applications"]] == APPS
    bad = _load(ROOT / "configs/dev-cpu.yaml")
    _app(bad)["args"]["engine"]["max_num_seqs"] = 0
    src = tmp_path / "bad.yaml"
    src.write_text(yaml.safe_dump(bad))
    assert main(["expand", str(src), "-o", str(tmp_path / "no.yaml")]) == 2 and not (tmp_path / "no.yaml").exists()


def test_every_application_of_a_valid_config_validates_with_its_own_builder():
    config = _load(ROOT / "configs/multi-model.yaml")
    # Choices per request above the engine default: the ingress's cut engines must still pass the check.
    _app(config)["args"]["ingress"] = {"max_n": 100}
    _app(config)["args"]["engine"]["max_num_seqs"] = 128
    _app(config)["args"]["models"][0]["engine"]["max_num_seqs"] = 128
    del _app(config)["name"]  # Serve's default name
    apps = {a["name"]: a for a in expand(config)["applications"]}
    assert set(apps) == {"default", f"default-{DEPLOYMENT}", "default-LLMServer-tiny-random-llama",
                         "default-retrieval", "default-agent"}
    assert validate_app_args(apps["default"]["args"]).ingress.max_n == 100
    build_ingress(apps["default"]["args"])
