"""The release guard (serve_app/release/guard.py): with code changes off, a release changes data only; every
refusal is a 403 naming the field; a value equal to what runs always passes."""

import copy

import pytest

from serve_app.errors import status_for
from serve_app.release.guard import CodeChangeRefused, check_release
from tests.names import DEPLOYMENT

pytestmark = pytest.mark.unit

APP = "serve_app"


def _config(args=None, deployments=None, **app):
    return {"applications": [{"name": APP, "import_path": "serve_app.app:build_app", "args": args or {},
                              "deployments": deployments or [], **app}]}


def _refusal(current, new) -> CodeChangeRefused:
    with pytest.raises(CodeChangeRefused) as info:
        check_release(current, new, APP)
    assert status_for(info.value) == 403 and info.value.code == "code_change_not_allowed"
    return info.value


@pytest.mark.parametrize("args, field", [
    ({"engine": {"factory": "evil.module:make"}}, "engine.factory"),
    ({"engine": {"extra_args": ["--trust-remote-code"]}}, "engine.extra_args"),
    ({"engine": {"extra_args": ["--tool-parser-plugin", "/srv/x.py"]}}, "engine.extra_args"),
    ({"engine": {"extra_args": ["--chat-template=/etc/passwd"]}}, "engine.extra_args"),
    ({"engine": {"extra_args": ["--max-num-seqs", "/x"]}}, "engine.extra_args"),
    ({"engine": {"extra_args": ["--enforce-eager", "yes"]}}, "engine.extra_args"),
    ({"model": {"chat_template": "/srv/t.jinja"}}, "model.chat_template"),
    ({"releases": {"allow_code_changes": True}}, "releases.allow_code_changes"),
    ({"releases": {"engine_factories": ["evil.module:make"]}}, "releases.engine_factories"),
    ({"models": [{"model": {"source": "tiny"}, "engine": {"factory": "evil.m:f"}}]}, "models[0].engine.factory"),
])
def test_code_in_the_settings_is_refused_naming_the_field(args, field):
    assert _refusal(_config(), _config(args)).param == field


@pytest.mark.parametrize("app, deployments, field", [
    ({"runtime_env": {"pip": ["evil"]}}, None, "runtime_env.pip"),
    ({"runtime_env": {"working_dir": "https://example.com/x.zip"}}, None, "runtime_env.working_dir"),
    ({"runtime_env": {"env_vars": {"PYTHONPATH": "/srv"}}}, None, "runtime_env.env_vars.PYTHONPATH"),
    ({"runtime_env": {"env_vars": {"LD_PRELOAD": "/x.so"}}}, None, "runtime_env.env_vars.LD_PRELOAD"),
    ({}, [{"name": DEPLOYMENT, "ray_actor_options": {"runtime_env": {"env_vars": {"VLLM_PLUGINS": "x"}}}}],
     f"deployments.{DEPLOYMENT}.ray_actor_options.runtime_env.env_vars.VLLM_PLUGINS"),
    ({}, [{"name": "Ingress", "ray_actor_options": {"runtime_env": {"py_modules": ["/srv/m"]}}}],
     "deployments.Ingress.ray_actor_options.runtime_env.py_modules"),
    ({}, [{"name": DEPLOYMENT, "request_router_config": {"request_router_class": "evil:Router"}}],
     f"deployments.{DEPLOYMENT}.request_router_config.request_router_class"),
    ({}, [{"name": DEPLOYMENT, "autoscaling_config": {"policy": {"policy_function": "evil:f"}}}],
     f"deployments.{DEPLOYMENT}.autoscaling_config.policy"),
    ({"autoscaling_policy": {"policy_function": "evil:f"}}, None, "autoscaling_policy"),
])
def test_code_in_the_serve_config_is_refused_naming_the_field(app, deployments, field):
    assert _refusal(_config(), _config(deployments=deployments, **app)).param == field


def test_data_changes_pass():
    new = _config({"engine": {"max_model_len": 1024, "extra_args": ["--max-num-batched-tokens", "4096",
                                                                     "--enable-prefix-caching", "--block-size=32"]},
                   "ingress": {"request_timeout_s": 30}, "releases": {"watch_s": 3}},
                  deployments=[{"name": "Ingress", "ray_actor_options": {"runtime_env": {"env_vars": {
                      "SERVE_APP_API_KEYS_FILE": "/etc/keys.yaml", "OTEL_SERVICE_NAME": "x"}}}},
                      {"name": DEPLOYMENT, "num_replicas": 2}],
                  runtime_env={"env_vars": {"LOG_LEVEL": "debug"}})
    check_release(_config(), new, APP)


def test_what_runs_can_be_sent_back_and_registered_factories_pass():
    current = _config({"engine": {"factory": "mine.engine:make", "extra_args": ["--trust-remote-code"]},
                       "model": {"chat_template": "/srv/t.jinja"},
                       "releases": {"engine_factories": ["tests.fakes.engine:turns_unhealthy"]}},
                      runtime_env={"pip": ["x"], "env_vars": {"PYTHONPATH": "/srv"}})
    check_release(current, copy.deepcopy(current), APP)
    new = copy.deepcopy(current)
    new["applications"][0]["args"]["engine"]["factory"] = "tests.fakes.engine:turns_unhealthy"
    new["applications"][0]["args"]["engine"]["extra_args"] += ["--max-num-seqs", "8"]
    check_release(current, new, APP)
    # Only the pairs already running are exempt: another value of the same unsafe flag is not.
    new["applications"][0]["args"]["engine"]["extra_args"] = ["--trust-remote-code", "--tokenizer", "evil/x"]
    assert _refusal(current, new).param == "engine.extra_args"


def test_the_running_config_can_allow_code_changes():
    current = _config({"releases": {"allow_code_changes": True}})
    new = _config({"engine": {"factory": "evil.module:make", "extra_args": ["--trust-remote-code"]},
                   "releases": {"allow_code_changes": False}}, runtime_env={"pip": ["x"]})
    check_release(current, new, APP)
