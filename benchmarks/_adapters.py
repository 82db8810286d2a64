"""The LoRA adapter the adapter benchmark and the tests use: made with peft from the default model, random
weights from a fixed seed, so both make the same adapter and the benchmark's recorded greedy answer
(benchmarks/results/lora.json) is what the app must answer with it."""

from __future__ import annotations

from pathlib import Path

SEED = 0
RANK = 8
PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]
MAX_TOKENS = 24


def make_adapter(base_dir: str | Path, out_dir: str | Path, seed: int = SEED, rank: int = RANK) -> Path:
    """A peft LoRA adapter for the model in ``base_dir`` (q and v projections, rank ``rank``; both LoRA matrices
    drawn at random, so it changes the model's answers), saved as safetensors in ``out_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out), safe_serialization=True)
    return out
