"""Why TTFT p50 at 8 clients moves between rounds: the 8-client chat load of `benchmarks.cpu` (random 256 in /
64 out, `ignore_eos`, 64 prompts) runs in waves of 8 requests that start together and end together; this reads
`vllm bench serve`'s per-request start times and TTFTs, bare `vllm serve` and the app alternated, and reports per
wave how far apart its requests started and how far apart their first tokens came.

    python -m benchmarks.chat_waves [--repeat 2]

Writes benchmarks/results/chat_waves.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

WAVE_GAP_S = 0.3  # a pause this long between two requests' starts begins the next wave


def load(url: str, model: str, tokenizer: str, prompts: int, seed: int = 0) -> dict[str, Any]:
    """One `vllm bench serve` run with its per-request fields kept (``--save-detailed``)."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    return main(parser.parse_args([
        "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions", "--model", model,
        "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", "256",
        "--random-output-len", "64", "--ignore-eos", "--num-prompts", str(prompts), "--max-concurrency", "8",
        "--num-warmups", "8", "--seed", str(seed), "--disable-tqdm", "--save-detailed"]))


def waves(start_times: list[float], ttfts: list[float]) -> dict[str, Any]:
    pairs = sorted(zip(start_times, ttfts, strict=True))
    groups: list[list[tuple[float, float]]] = [[pairs[0]]]
    for pair in pairs[1:]:
        if pair[0] - groups[-1][-1][0] > WAVE_GAP_S:
            groups.append([])
        groups[-1].append(pair)
    fast = [sum(1 for _, t in g if t < min(x for _, x in g) + 0.5) for g in groups]
    return {"waves": len(groups), "sizes": [len(g) for g in groups],
            "start_spread_ms": [round((g[-1][0] - g[0][0]) * 1000) for g in groups],
            "ttft_spread_ms": [round((max(t for _, t in g) - min(t for _, t in g)) * 1000) for g in groups],
            "first_tokens_within_500ms_of_the_waves_first": fast,
            "ttft_p50_ms": round(statistics.median(ttfts) * 1000)}


def main() -> None:
    from benchmarks._servers import ROOT, bare_vllm, engine_setup, serve_app
    from serve_app.llm import engine_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dev-cpu.yaml")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ns = p.parse_args()
    settings, model_dir, cli = engine_setup(ns.config)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [("vllm", lambda: bare_vllm(cli, engine_args.env(settings.engine), out / "chat_waves-vllm.log")),
               ("serve_app", lambda: serve_app(ns.config, out / "chat_waves-serve_app.log"))]
    results = {}
    for r in range(ns.repeat):
        for name, start in targets:
            with start() as (url, _ready_s):
                load(url, settings.model.name, str(model_dir), 8, seed=1)  # warm-up, not measured
                x = load(url, settings.model.name, str(model_dir), 64)
                results[f"{name}.{r + 1}"] = waves(x["start_times"], x["ttfts"])
                print(f"{name}.{r + 1}", json.dumps(results[f"{name}.{r + 1}"]), flush=True)
    report = {"what": __doc__.strip().splitlines()[0], "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "results": results}
    (out / "chat_waves.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
