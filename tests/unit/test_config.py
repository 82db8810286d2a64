"""Config invariants: the shipped config files deploy as they are; an invalid config is refused before
anything starts, with a message naming the field; engine settings become arguments vLLM's own parser
accepts."""

import textwrap

import pytest

from serve_app.config import AppSettings, ConfigError, load_serve_config
from serve_app.config.loader import validate_app_args
from serve_app.llm import engine_args
from serve_app.llm.engine import vllm_serve_args

pytestmark = [pytest.mark.unit, pytest.mark.vllm]  # vllm: runs under `make check-gpu-build` too


@pytest.mark.parametrize("path", ["configs/dev-cpu.yaml", "configs/gpu.yaml", "configs/multi-model.yaml"])
def test_shipped_configs_validate(path):
    schema, settings = load_serve_config(path)
    assert set(settings) == {"serve_app"}
    deployments = {d.name for d in schema.applications[0].deployments}
    assert deployments == {"Ingress", "Embedder", "VectorStore", "Agent", *settings["serve_app"].served_models()}
    assert "LLMServer-SmolLM2-135M-Instruct" in deployments  # named by its model, the first one too


def test_the_multi_model_config_serves_two_models_each_its_own_deployment():
    _, settings = load_serve_config("configs/multi-model.yaml")
    s = settings["serve_app"]
    assert s.model_names() == ["SmolLM2-135M-Instruct", "tiny-random-llama"]
    assert list(s.served_models()) == ["LLMServer-SmolLM2-135M-Instruct", "LLMServer-tiny-random-llama"]


def _models(*names, **extra):
    return {"model": {"source": "default"}, "models": [{"model": {"source": "tiny", "served_name": n}} for n in names],
            **extra}


@pytest.mark.parametrize(
    "args, message",
    [
        (_models("SmolLM2-135M-Instruct"), "models[0].model: the served name 'SmolLM2-135M-Instruct' is already served by model"),
        (_models("a", "a"), "models[1].model: the served name 'a' is already served by models[0].model"),
        (_models("all-MiniLM-L6-v2"), "already served by vector.embedder_name"),
        (_models("a b"), "models[0].model.served_name"),
        (_models("a/b", "a-b"), "gives the same deployment name 'LLMServer-a-b'"),
        (_models("a", rag={"model": "nope"}), "rag.model: 'nope' is not a served model"),
        (_models("a", agent={"model": "nope"}), "agent.model: 'nope' is not a served model"),
        ({"models": [{"model": {"source": "tiny", "enabled": False}}]}, "models[0].model.enabled"),
        ({"model": {"enabled": False}, "models": [{"model": {"source": "tiny"}}]}, "more models need the first"),
        ({"models": [{"engine": {"max_num_seqs": 2}, "model": {"source": "tiny"}}]}, "models[0].engine.max_num_seqs"),
        ({"model": {"source": "/srv/my model"}}, "model: the served name '/srv/my model' is not a valid model name"),
    ],
)
def test_invalid_model_lists_are_refused_naming_the_field(args, message):
    with pytest.raises(ConfigError) as info:
        validate_app_args(args)
    assert message in str(info.value), str(info.value)


def test_defaults_are_valid():
    s = AppSettings()
    assert s.model.name == "SmolLM2-135M-Instruct"
    assert s.engine.max_num_seqs >= s.ingress.max_n


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    return p


APP = """
applications:
  - name: a
    import_path: serve_app.app:build_app
    args:
{args}
"""


@pytest.mark.parametrize(
    "args, field",
    [
        ("      engine: {max_model_len: 0}", "engine.max_model_len"),
        ("      engine: {dtype: 3}", "engine.dtype"),
        ("      ingress: {max_n: 0}", "ingress.max_n"),
        ("      ingress: {max_body_bytes: -1}", "ingress.max_body_bytes"),
        ("      engine: {max_num_sequences: 4}", "engine.max_num_sequences"),  # typo: unknown field
        ("      modle: {source: x}", "modle"),
    ],
)
def test_invalid_app_settings_name_the_field(tmp_path, args, field):
    with pytest.raises(ConfigError) as info:
        load_serve_config(_write(tmp_path, APP.format(args=args)))
    assert f"applications[0].args.{field}" in str(info.value)


def test_invalid_serve_options_are_refused(tmp_path):
    text = APP.format(args="      release: x") + "    deployments:\n      - name: LLMServer-SmolLM2-135M-Instruct\n        num_replicas: -3\n"
    with pytest.raises(ConfigError) as info:
        load_serve_config(_write(tmp_path, text))
    assert "num_replicas" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_serve_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_serve_config(_write(tmp_path, "a: [1,"))
    with pytest.raises(ConfigError, match="mapping"):
        load_serve_config(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="no application"):
        load_serve_config(_write(tmp_path, "applications:\n  - name: a\n    import_path: x.y:z\n"))


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="max_num_seqs"):
        validate_app_args({"engine": {"max_num_seqs": 2}, "ingress": {"max_n": 4}})


def _no_vllm_device() -> bool:
    from vllm.platforms import current_platform

    return not current_platform.device_type


# vLLM's parser infers the device: a GPU build on a machine without a GPU (`make check-gpu-build`) has none.
@pytest.mark.skipif(_no_vllm_device(), reason="vLLM finds no device it can serve on (GPU build without a GPU)")
def test_engine_args_parse_with_vllms_parser():
    s = AppSettings.model_validate({"engine": {"max_model_len": 1024, "extra_args": ["--max-num-batched-tokens", "4096"]}})
    args = vllm_serve_args(engine_args.cli_args(s.engine, "some/model", s.model))
    assert args.model == "some/model"
    assert args.served_model_name == ["SmolLM2-135M-Instruct"]
    assert args.max_model_len == 1024
    assert args.enforce_eager is True
    assert args.max_num_batched_tokens == 4096
    assert engine_args.env(s.engine) == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    # Tool calling on by default with the default model's format and its tool-aware template.
    assert args.enable_auto_tool_choice and args.tool_call_parser == "xlam"
    assert args.chat_template.endswith("smollm2_tools.jinja") and args.exclude_tools_when_tool_choice_none
    off = AppSettings.model_validate({"model": {"source": "org/m", "tool_parser": None}})
    args = vllm_serve_args(engine_args.cli_args(off.engine, "org/m", off.model))
    assert not args.enable_auto_tool_choice and args.tool_call_parser is None and args.chat_template is None


def test_served_name_rules():
    assert AppSettings.model_validate({"model": {"source": "org/m"}}).model.name == "org/m"
    assert AppSettings.model_validate({"model": {"source": "org/m", "served_name": "m"}}).model.name == "m"


@pytest.mark.parametrize(
    "options",
    ["num_replicas: 2", "autoscaling_config: {min_replicas: 1, max_replicas: 3}"],
)
def test_embedded_store_is_single_replica(tmp_path, options):
    text = APP.format(args="      vector: {backend: edge}") + f"    deployments:\n      - name: VectorStore\n        {options}\n"
    with pytest.raises(ConfigError, match="single-writer"):
        load_serve_config(_write(tmp_path, text))
    # The remote backend may scale the store.
    remote = APP.format(args="      vector: {backend: remote, url: 'http://q:6333'}") + f"    deployments:\n      - name: VectorStore\n        {options}\n"
    load_serve_config(_write(tmp_path, remote))


def test_vector_rules():
    with pytest.raises(ConfigError, match="chunk_overlap"):
        validate_app_args({"vector": {"chunk_tokens": 50, "chunk_overlap": 50}})
    with pytest.raises(ConfigError, match="url"):
        validate_app_args({"vector": {"backend": "remote"}})
    with pytest.raises(ConfigError, match="vector.backend"):
        validate_app_args({"vector": {"backend": "faiss"}})


def test_options_for_a_deployment_the_settings_disable_are_refused(tmp_path):
    text = APP.format(args="      model:\n        enabled: false") + "    deployments:\n      - name: Agent\n        num_replicas: 1\n"
    with pytest.raises(ConfigError, match=r"deployments\[0\].*no deployment 'Agent'.*model.enabled"):
        load_serve_config(_write(tmp_path, text))
