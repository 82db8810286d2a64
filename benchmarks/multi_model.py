"""Several models on one machine: what a second engine costs the first model.

The default model's throughput under `vllm bench serve` (random dataset, fixed seed, 8 clients) three ways, one
server at a time in the same run: bare `vllm serve` (what a user would run instead), the app serving that model
alone (configs/dev-cpu.yaml), and the app serving it next to an idle second engine (configs/multi-model.yaml: the
tiny model, each engine on a core of its own). Also what the second engine costs: its memory (resident set of
the replica and its engine processes) and its start (the engine's own start, and the app's time to healthy).

    python -m benchmarks.multi_model [--concurrency 8] [--prompts 64]

Writes benchmarks/results/multi_model.json.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import httpx

from benchmarks._servers import bare_vllm, engine_setup, serve_app
from benchmarks.chat import load_args, run_load
from serve_app.llm import engine_args

# The app without the engine CPU split: with it every engine would be bound to the same cores
# (docs/operations.md, "Several models on one machine").
NO_SPLIT = {"SERVE_APP_ISOLATE_ENGINE_CPUS": "0"}


def _tree_rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20, 1)


def _engines(url: str) -> dict[str, dict]:
    components = httpx.get(url + "/healthz", timeout=30).json()["components"]
    return {c["model"]: {"rss_mib": _tree_rss_mib(c["pid"]), "engine_start_s": c["engine_start_s"],
                         "cpus": c["cpus"]}
            for name, c in components.items() if name.startswith("llm:")}


def main() -> None:
    ns = load_args(__doc__).parse_args()
    settings, model_dir, cli = engine_setup("configs/dev-cpu.yaml")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [
        ("vllm", lambda: bare_vllm(cli, engine_args.env(settings.engine), out / "multi_model-vllm.log")),
        ("app, model alone", lambda: serve_app("configs/dev-cpu.yaml", out / "multi_model-alone.log", NO_SPLIT)),
        ("app, second engine idle", lambda: serve_app("configs/multi-model.yaml", out / "multi_model-two.log",
                                                      NO_SPLIT)),
    ]
    results: dict = {}
    for name, start in targets:
        with start() as (url, ready_s):
            print(f"== {name} ready in {ready_s:.1f}s at {url}", flush=True)
            row = {"ready_s": round(ready_s, 1)}
            if name != "vllm":
                row["engines"] = _engines(url)
            row["load"] = run_load(url, settings.model.name, model_dir, ns.concurrency, ns.prompts, ns)
            results[name] = row
    tput = {name: r["load"]["output_throughput"] for name, r in results.items()}
    alone, two = results["app, model alone"], results["app, second engine idle"]
    second = {m: e for m, e in two["engines"].items() if m != settings.model.name}
    report = {
        "what": "the default model's throughput with a second engine idle vs alone, and what the second engine "
                "costs; vllm bench serve random dataset",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "concurrency": ns.concurrency, "prompts": ns.prompts, "input_len": ns.input_len, "output_len": ns.output_len,
        "results": results,
        "ratios": {
            "second_idle_vs_alone_throughput": round(tput["app, second engine idle"] / tput["app, model alone"], 3),
            "alone_vs_bare_vllm_throughput": round(tput["app, model alone"] / tput["vllm"], 3),
            "second_idle_vs_bare_vllm_throughput": round(tput["app, second engine idle"] / tput["vllm"], 3),
        },
        "second_engine": {
            "engines": second,
            "app_ready_s_added": round(two["ready_s"] - alone["ready_s"], 1),
        },
    }
    (out / "multi_model.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"ratios": report["ratios"], "second_engine": report["second_engine"],
                      "throughput": tput}, indent=1))


if __name__ == "__main__":
    main()
