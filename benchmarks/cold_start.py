"""Scale to zero: what a cold model's first request costs, against starting bare `vllm serve` on demand.

The app runs configs/multi-model.yaml (the default and the tiny model) with both models at
``min_replicas: 0``; each model is let go to zero replicas, then one chat request is timed (cold: Serve starts
a replica, its engine loads, then it answers), then one more (warm). The baseline is what a user without scale
to zero would do for an idle model: start bare `vllm serve` with the same engine arguments when a request
comes, and send it once the server is up (its start to ready, plus one chat).

    python -m benchmarks.cold_start [--rounds 2]

Writes benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from benchmarks._servers import ROOT, bare_vllm, engine_setup, serve_app
from serve_app.config.names import llm_deployment_name
from serve_app.llm import engine_args

TO_ZERO = {"min_replicas": 0, "max_replicas": 1, "target_ongoing_requests": 8, "upscale_delay_s": 0,
           "downscale_delay_s": 2, "downscale_to_zero_delay_s": 2, "look_back_period_s": 2}
BODY = {"max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}


def _config(tmp: Path) -> Path:
    config = yaml.safe_load((ROOT / "configs/multi-model.yaml").read_text())
    for d in config["applications"][0]["deployments"]:
        if d["name"].startswith("LLMServer-"):
            d["autoscaling_config"] = dict(TO_ZERO)
    path = tmp / "cold-start.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _chat_s(url: str, model: str) -> float:
    began = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": model, **BODY}, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - began


def _at_zero(url: str, model: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        component = httpx.get(f"{url}/healthz", timeout=10).json()["components"][f"llm:{model}"]
        if component["status"] == "scaled_to_zero":
            return
        time.sleep(0.5)
    raise TimeoutError(f"{model} did not scale to zero within {timeout_s:g}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    ns = parser.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    settings, model_dir, cli = engine_setup("configs/multi-model.yaml")
    names = settings.model_names()
    results: dict = {"app": {m: {"cold_s": [], "warm_s": []} for m in names}}
    with tempfile.TemporaryDirectory() as tmp, serve_app(str(_config(Path(tmp))), out / "cold_start-app.log") as (
            url, ready_s):
        results["app_ready_s"] = round(ready_s, 1)  # no engine starts: every model begins at zero replicas
        for _ in range(ns.rounds):
            for model in names:
                _at_zero(url, model)
                results["app"][model]["cold_s"].append(round(_chat_s(url, model), 2))
                results["app"][model]["warm_s"].append(round(_chat_s(url, model), 3))
    # The baseline: bare vLLM started on demand for the default model, then the same request.
    bare = []
    for _ in range(ns.rounds):
        began = time.perf_counter()
        with bare_vllm(cli, engine_args.env(settings.engine), out / "cold_start-vllm.log") as (url, _ready_s):
            httpx.post(f"{url}/v1/chat/completions", json={"model": names[0], **BODY}, timeout=600).raise_for_status()
            bare.append(round(time.perf_counter() - began, 2))
    default = statistics.median(results["app"][names[0]]["cold_s"])
    report = {
        "what": "a cold model's first chat request (app, min_replicas 0) vs starting bare vllm serve on demand "
                "and sending the same request; seconds",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "deployments": {m: llm_deployment_name(m) for m in names},
        "autoscaling_config": TO_ZERO,
        "results": {**results, "bare_vllm_start_and_first_chat_s": bare},
        "ratios": {"app_cold_first_chat_vs_bare_vllm_start": round(default / statistics.median(bare), 3)},
    }
    (out / "cold_start.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"results": report["results"], "ratios": report["ratios"]}, indent=1))


if __name__ == "__main__":
    main()
