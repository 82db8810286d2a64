"""LoRA adapters loaded and unloaded at run time on the session app's default model (LoRA on: tests/conftest.py
TEST_SETTINGS, at most one adapter): each load and unload is a release that restarts no engine; the adapter
answers what bare vLLM answers with it (the reference benchmarks/lora.py recorded) and differs from its base;
after an unload it is a 404; a rollback undoes an unload; every bad load is refused with a 4xx before anything
is recorded or loaded.

The adapter is made here with peft from the default model (benchmarks/_adapters.py: random LoRA weights from a
fixed seed: the same adapter the benchmark made)."""

import json
import os
import shutil
from pathlib import Path

import openai
import pytest
import torch
from safetensors.torch import save_file

from benchmarks._adapters import MAX_TOKENS, PROMPT, make_adapter
from serve_app.errors import status_of
from serve_app.llm.model import prepare_default_model
from tests.chaos.faults import follow
from tests.names import LLM
from tests.polling import WaitTimeout, wait_until

pytestmark = pytest.mark.release

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "benchmarks/results/lora.json").read_text())["reference"]
BASE = "SmolLM2-135M-Instruct"
TINY = "tiny-random-llama"
ADAPTER = "smol-a"


@pytest.fixture(scope="module")
def adapter_root(data_dir):
    root = data_dir / "adapters"  # the default lora.root: $SERVE_APP_DATA_DIR/adapters
    root.mkdir(exist_ok=True)
    make_adapter(prepare_default_model(), root / ADAPTER)
    return root


def _engines(http) -> dict:
    components = http.get("/healthz").json()["components"]
    return {name: (c["replica"], c["pid"], c["started_at"]) for name, c in components.items()
            if name.startswith("llm:")}


def _llm_adapters(http, expected: dict, timeout_s: float = 15) -> dict:
    """The first model's adapters as /healthz shows them, once they are ``expected`` (polled: /healthz answers
    from its background probe, taken every ingress.health_period_s); past ``timeout_s``, as they are then (the
    caller's assertion shows them)."""
    try:
        return wait_until(lambda: http.get("/healthz").json()["components"][LLM]["adapters"], timeout_s,
                          interval_s=0.2, until=lambda adapters: all(adapters.get(k) == v for k, v in expected.items()),
                          what=f"the first model's adapters {expected}")
    except WaitTimeout as exc:
        return exc.last


def _chat(client, model: str) -> str:
    r = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    return r.choices[0].message.content


def _cards(http) -> dict:
    return {m["id"]: m for m in http.get("/v1/models").json()["data"]}


def _good(admin, out: dict, kind: str) -> dict:
    rel = follow(admin, out["release"])
    assert rel["status"] == "good" and rel["kind"] == kind, rel
    return rel


def test_an_adapter_is_loaded_used_unloaded_and_rolled_back_without_an_engine_restart(http, admin, client,
                                                                                        adapter_root):
    engines = _engines(http)
    base = _chat(client, BASE)
    out = admin.load_adapter(ADAPTER, ADAPTER)
    assert out["adapter"]["model"] == BASE and out["adapter"]["rank"] == 8
    _good(admin, out, "adapter-load")
    assert _cards(http)[ADAPTER]["parent"] == BASE
    answer = _chat(client, ADAPTER)
    assert answer != base
    assert answer == REFERENCE["adapter_answer"]  # what bare `vllm serve --lora-modules` answered
    assert ADAPTER in _llm_adapters(http, {"held": [ADAPTER]})["held"]
    # One adapter is allowed (max_adapters 1): a second one is refused, nothing is loaded.
    r = admin.post("/admin/adapters", json={"name": "second", "path": ADAPTER})
    assert r.status_code == 400 and "more than max_adapters" in r.json()["error"]["message"], r.text

    _good(admin, admin.unload_adapter(ADAPTER), "adapter-unload")
    with pytest.raises(openai.NotFoundError):
        _chat(client, ADAPTER)
    assert ADAPTER not in _cards(http)
    # The unload was a release: rolling it back loads the adapter again.
    back = follow(admin, admin.rollback()["release"])
    assert back["status"] == "good", back
    assert _chat(client, ADAPTER) == answer
    _good(admin, admin.unload_adapter(ADAPTER), "adapter-unload")
    assert _engines(http) == engines  # same replicas, same processes, same engine start: nothing restarted


def _copy(root: Path, name: str) -> Path:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(root / ADAPTER, path)
    return path


def _edit(path: Path, **changes) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def test_bad_adapter_loads_are_refused_with_a_4xx_and_change_nothing(http, admin, client, adapter_root, data_dir):
    (_copy(adapter_root, "pickled") / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    _edit(_copy(adapter_root, "rank64"), r=64)
    _edit(_copy(adapter_root, "other-base"), base_model_name_or_path="org/OtherModel")
    # Weights of a smaller model of the same family: the config says SmolLM2, the shapes do not.
    small = {f"base_model.model.model.layers.0.self_attn.q_proj.lora_{ab}.weight": torch.zeros(shape)
             for ab, shape in (("A", (8, 64)), ("B", (64, 8)))}
    save_file(small, str(_copy(adapter_root, "shapes") / "adapter_model.safetensors"))
    (adapter_root / "not-lora").mkdir(exist_ok=True)
    outside = data_dir / "outside"
    shutil.rmtree(outside, ignore_errors=True)
    shutil.copytree(adapter_root / ADAPTER, outside)
    if not (adapter_root / "escape").exists():
        os.symlink(outside, adapter_root / "escape")

    releases = admin.releases()
    cases = [
        ({"name": "x", "path": "missing"}, 400, "does not exist"),
        ({"name": "x", "path": "../outside"}, 400, "without '..'"),
        ({"name": "x", "path": "escape"}, 400, "outside the adapter root"),
        ({"name": "x", "path": "not-lora"}, 400, "not a LoRA adapter"),
        ({"name": "x", "path": "pickled"}, 400, "pickled weights are refused"),
        ({"name": "x", "path": "rank64"}, 400, "above this model's maximum"),
        ({"name": "x", "path": "other-base"}, 400, "for the base model 'OtherModel'"),
        ({"name": "x", "path": "shapes"}, 400, "made for another model"),
        ({"name": BASE, "path": ADAPTER}, 400, "already served"),
        ({"name": TINY, "path": ADAPTER}, 400, "already served"),
        ({"name": "x", "path": ADAPTER, "model": TINY}, 400, "LoRA is off"),
        ({"name": "x", "path": ADAPTER, "model": "nope"}, 404, "not served"),
        ({"name": "a b", "path": ADAPTER}, 400, "name"),
    ]
    for body, status, fragment in cases:
        r = admin.post("/admin/adapters", json=body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert status_of(error) == status and fragment in error["message"], (body, error)
    r = admin.delete("/admin/adapters/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        _chat(client, "nope")
    assert admin.releases() == releases  # nothing recorded
    assert _llm_adapters(http, {"configured": 0, "held": []}) == {"configured": 0, "held": []}
