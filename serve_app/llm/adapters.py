"""LoRA adapter folders: what is checked before an adapter comes near an engine.

An adapter is a folder under the model's adapter root (``lora.root``) holding a peft LoRA adapter:
``adapter_config.json`` and ``adapter_model.safetensors``. Refused, each with a 400 that says why:

- a folder outside the root: an absolute path, ``..``, or a symlink (of the folder or of any file in it) whose
  target is outside the root; a name that does not exist or is not a folder;
- weights that are code: pickled files (``.bin``, ``.pt``, ...; loading one runs what it contains) and any
  Python or native code (nothing an adapter needs; no remote code is ever run);
- anything but a LoRA adapter (no config, another peft type, no safetensors weights);
- an adapter made for another base model (by the name in its config, and by its weights' shapes), or of a rank
  above the engine's ``max_rank``.

What the checks cannot see the trial load in the engine sees: the
release controller has one replica load every new adapter before the release that adds it counts as good
(serve_app/release/rollout.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from serve_app.config.model_settings import check_folder_name
from serve_app.errors import InvalidRequest

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLED = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
CODE = {".py", ".pyc", ".so", ".dylib", ".dll", ".sh"}
MAX_CONFIG_BYTES = 1 << 20


def adapter_path(root: Path, folder: str) -> Path:
    """The adapter's folder under ``root`` (resolved), after the checks of where it is and what files it holds."""
    try:
        check_folder_name(folder, "path")
    except ValueError as exc:
        raise InvalidRequest(str(exc), "path") from None
    root = Path(root).resolve()
    path = root / folder
    if not path.exists():
        raise InvalidRequest(f"the adapter folder {folder!r} does not exist under the adapter root", "path")
    real = path.resolve()
    if not real.is_relative_to(root):
        raise InvalidRequest(f"the adapter folder {folder!r} leads outside the adapter root", "path")
    if not real.is_dir():
        raise InvalidRequest(f"{folder!r} is not a folder", "path")
    for f in real.rglob("*"):
        rel = f.relative_to(real)
        if not f.resolve().is_relative_to(root):
            raise InvalidRequest(f"{folder}/{rel} leads outside the adapter root", "path")
        suffix = f.suffix.lower()
        if suffix in PICKLED:
            raise InvalidRequest(f"{folder}/{rel}: pickled weights are refused (loading them can run code); "
                                 f"save the adapter as safetensors ({WEIGHTS})", "path")
        if suffix in CODE:
            raise InvalidRequest(f"{folder}/{rel}: an adapter folder holds no code", "path")
    return real


def _same_model(base: str, names: set[str]) -> bool:
    """Whether an adapter's ``base_model_name_or_path`` names the served model: one of its names, or the same last
    path component (a hub id ``org/Model`` and a local folder ``.../Model`` name the same model)."""
    last = PurePosixPath(base.rstrip("/")).name
    return base in names or last in {PurePosixPath(n.rstrip("/")).name for n in names}


def check_adapter(path: Path, folder: str, base_names: set[str], max_rank: int) -> dict[str, Any]:
    """What the adapter's config says, checked against the serving model (its names ``base_names``) and the
    engine's ``max_rank``. Returns ``{"rank", "base_model", "target_modules"}``."""
    config_file = path / CONFIG
    if not config_file.is_file():
        raise InvalidRequest(f"{folder!r} is not a LoRA adapter: it has no {CONFIG}", "path")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidRequest(f"{folder}/{CONFIG} is too large to be an adapter config", "path")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"{folder}/{CONFIG} is not valid JSON", "path") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise InvalidRequest(f"{folder!r} is not a LoRA adapter (peft_type {kind!r})", "path")
    if not (path / WEIGHTS).is_file():
        raise InvalidRequest(f"{folder!r} has no {WEIGHTS}: only safetensors weights are loaded", "path")
    given = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    ranks = [r for r in given if isinstance(r, int) and r >= 1]
    if len(ranks) != len(given):
        raise InvalidRequest(f"{folder}/{CONFIG}: 'r' must be a positive integer", "path")
    rank = max(ranks)
    if rank > max_rank:
        raise InvalidRequest(f"the adapter's rank {rank} is above this model's maximum {max_rank} (lora.max_rank)",
                             "path")
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise InvalidRequest(f"{folder}/{CONFIG} does not say which base model the adapter is for "
                             "(base_model_name_or_path)", "path")
    if not _same_model(base, base_names):
        shown = PurePosixPath(base.rstrip("/")).name
        raise InvalidRequest(f"the adapter is for the base model {shown!r}, not for this model", "path")
    return {"rank": rank, "base_model": PurePosixPath(base.rstrip("/")).name,
            "target_modules": config.get("target_modules")}


_LAYER = re.compile(r"\.layers\.(\d+)\.(?:[a-z_]+\.)?([a-z_]+)\.lora_([AB])\.weight$")


def _module_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(input, output) features of the projections of a Llama-family decoder layer, from the model's config."""
    hidden, inter = config.get("hidden_size"), config.get("intermediate_size")
    heads = config.get("num_attention_heads")
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    if not (hidden and heads and head_dim):
        return {}
    shapes = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim),
              "v_proj": (hidden, kv * head_dim), "o_proj": (heads * head_dim, hidden)}
    if inter:
        shapes |= {"gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    return shapes


def check_shapes(path: Path, folder: str, config: dict[str, Any]) -> None:
    """The weights' shapes (read from the safetensors header, nothing loaded) against the serving model's
    ``config`` (its config.json): vLLM copies an adapter's matrices into buffers of the model's sizes, so an
    adapter made for a smaller model of the same family would load and answer nonsense without this."""
    from safetensors import safe_open

    shapes = _module_shapes(config)
    layers = config.get("num_hidden_layers")
    try:
        with safe_open(str(path / WEIGHTS), "pt") as weights:
            found = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except Exception:  # noqa: BLE001 - any reason the header cannot be read
        raise InvalidRequest(f"{folder}/{WEIGHTS} is not a readable safetensors file", "path") from None
    for name, shape in found.items():
        m = _LAYER.search(name)
        if m is None:
            continue
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if layers is not None and layer >= layers:
            raise InvalidRequest(f"the adapter has weights for layer {layer}; this model has {layers} layers", "path")
        if module in shapes and len(shape) == 2:
            fan_in, fan_out = shapes[module]
            want = (shape[0], fan_in) if ab == "A" else (fan_out, shape[1])
            if shape != want:
                raise InvalidRequest(f"the adapter's {module} weights have the shape {list(shape)}; this model's "
                                     f"need {list(want)}: the adapter was made for another model", "path")


def model_config(model: str) -> dict[str, Any]:
    """The served model's config (its config.json): from its folder, else through transformers (a hub id)."""
    local = Path(model) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model).to_dict()
