"""The engine settings as what vLLM reads: `vllm serve` command-line arguments and environment variables.

Built here, beside the engine, and parsed by vLLM's own parser (``serve_app.llm.engine.vllm_serve_args``), so
the app's engine and a bare `vllm serve` baseline (benchmarks/) start from exactly the same arguments.
"""

from __future__ import annotations

from pathlib import Path

from serve_app.config.names import SERVED_NAMES
from serve_app.config.settings import EngineSettings, LoraSettings, ModelSettings

# The default and tiny models share SmolLM2's tokenizer, whose own chat template ignores tools.
_TOOL_TEMPLATE = Path(__file__).parent / "templates" / "smollm2_tools.jinja"


def chat_template(model: ModelSettings) -> Path | None:
    """The chat template file the model's engine uses instead of the model's own, if any."""
    if model.chat_template is not None:
        return Path(model.chat_template).expanduser()
    return _TOOL_TEMPLATE if model.source in SERVED_NAMES else None


def cli_args(engine: EngineSettings, model_dir: str, model: ModelSettings, lora: LoraSettings | None = None) \
        -> list[str]:
    """The `vllm serve` arguments the settings stand for (without the KV-cache env var). With ``lora``, LoRA is
    on; adapters are added at run time (serve_app/llm/adapters.py), none is named here."""
    args = [
        "--model", model_dir,
        "--served-model-name", model.name,
        "--dtype", engine.dtype,
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--seed", str(engine.seed),
    ]
    if engine.enforce_eager:
        args.append("--enforce-eager")
    if engine.compact_json:
        args += ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
    if engine.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    if lora is not None:
        # One slot more in the engine's adapter cache than a replica holds: a trial load (of a release's new
        # adapter) then never evicts one that serves.
        args += ["--enable-lora", "--max-lora-rank", str(lora.max_rank), "--max-loras", str(lora.max_per_replica),
                 "--max-cpu-loras", str(lora.max_per_replica + 1)]
    template = chat_template(model)
    if template is not None:
        args += ["--chat-template", str(template)]
    if model.tool_parser is not None:
        # Tools stay out of the prompt when the request says tool_choice "none": the model then answers in
        # words instead of writing calls nobody parses.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", model.tool_parser,
                 "--exclude-tools-when-tool-choice-none"]
    return args + list(engine.extra_args)


def env(engine: EngineSettings) -> dict[str, str]:
    """Environment variables the engine needs (read by vLLM's CPU backend; harmless on GPU)."""
    if engine.kv_cache_space_gib is None:
        return {}
    # vLLM reads an integer number of GiB.
    return {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(engine.kv_cache_space_gib)))}
