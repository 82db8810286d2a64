"""LoRA adapters: requests for an adapter through the app vs bare `vllm serve --enable-lora --lora-modules`, and
what LoRA costs the base model's requests.

One server at a time in the same run, each serving the default model with the same engine arguments
(configs/dev-cpu.yaml): bare `vllm serve` with the adapter (what a user would run instead); the app with LoRA on
and the adapter configured (requests for the adapter, then for the base model); the app without LoRA (the base
model). Throughput under `vllm bench serve` (random dataset, fixed seed). The adapter is made here with peft
(benchmarks/_adapters.py: fixed seed), and its greedy answer to a fixed prompt from bare vLLM is recorded as
the reference the test suite compares the app's answer with (tests/release/test_runtime_adapters.py).

    python -m benchmarks.lora [--concurrency 8] [--prompts 64]

Writes benchmarks/results/lora.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from benchmarks._adapters import MAX_TOKENS, PROMPT, RANK, SEED, make_adapter
from benchmarks._servers import ROOT, bare_vllm, engine_setup, serve_app
from benchmarks.chat import load_args, run_load
from serve_app.config.settings import LoraSettings
from serve_app.llm import engine_args

ADAPTER = "bench-adapter"


def greedy(url: str, model: str) -> str:
    body = {"model": model, "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def main() -> None:
    ns = load_args(__doc__).parse_args()
    settings, model_dir, _ = engine_setup("configs/dev-cpu.yaml")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="serve-app-lora-bench-"))
    try:
        adapter_dir = make_adapter(model_dir, data / "adapters" / ADAPTER)
        lora = LoraSettings(adapters={ADAPTER: ADAPTER})
        config = yaml.safe_load((ROOT / "configs/dev-cpu.yaml").read_text())
        config["applications"][0]["args"]["lora"] = lora.model_dump(mode="json", exclude_defaults=True)
        lora_config = data / "lora.yaml"
        lora_config.write_text(yaml.safe_dump(config))
        cli = engine_args.cli_args(settings.engine, model_dir, settings.model, lora) + [
            "--lora-modules", f"{ADAPTER}={adapter_dir}"]
        env = {"SERVE_APP_DATA_DIR": str(data)}
        targets = [
            ("vllm, adapter", lambda: bare_vllm(cli, engine_args.env(settings.engine), out / "lora-vllm.log"),
             [ADAPTER]),
            ("app, LoRA on", lambda: serve_app(str(lora_config), out / "lora-app.log", env),
             [ADAPTER, settings.model.name]),
            ("app, LoRA off", lambda: serve_app("configs/dev-cpu.yaml", out / "lora-app-off.log", env),
             [settings.model.name]),
        ]
        results: dict = {}
        answers: dict = {}
        for name, start, models in targets:
            with start() as (url, ready_s):
                print(f"== {name} ready in {ready_s:.1f}s at {url}", flush=True)
                if ADAPTER in models:
                    answers[name] = greedy(url, ADAPTER)
                    answers[name + " (base)"] = greedy(url, settings.model.name)
                for model in models:
                    row = run_load(url, model, str(model_dir), ns.concurrency, ns.prompts, ns)
                    results[f"{name}: {'adapter' if model == ADAPTER else 'base'} requests"] = {
                        "ready_s": round(ready_s, 1), "load": row}
    finally:
        shutil.rmtree(data, ignore_errors=True)
    tput = {name: r["load"]["output_throughput"] for name, r in results.items()}
    report = {
        "what": "adapter requests through the app vs bare vllm serve --enable-lora --lora-modules, and the base "
                "model's requests with LoRA on (the adapter loaded) vs off; vllm bench serve random dataset",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "concurrency": ns.concurrency, "prompts": ns.prompts, "input_len": ns.input_len, "output_len": ns.output_len,
        "adapter": {"made_by": "benchmarks/_adapters.py", "seed": SEED, "rank": RANK,
                    "target_modules": ["q_proj", "v_proj"]},
        "results": results,
        "ratios": {
            "app_vs_bare_vllm_adapter_throughput": round(
                tput["app, LoRA on: adapter requests"] / tput["vllm, adapter: adapter requests"], 3),
            "base_with_lora_on_vs_off_throughput": round(
                tput["app, LoRA on: base requests"] / tput["app, LoRA off: base requests"], 3),
        },
        # The test suite compares the app's greedy answer with the adapter to this one, from bare vLLM.
        "reference": {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "adapter_answer": answers["vllm, adapter"],
                      "base_answer": answers["vllm, adapter (base)"],
                      "app_answer_equal": answers["app, LoRA on"] == answers["vllm, adapter"]},
    }
    (out / "lora.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ratios": report["ratios"], "throughput": tput, "reference": report["reference"]}, indent=1))


if __name__ == "__main__":
    main()
