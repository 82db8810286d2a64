"""Chat path: serve_app's ingress vs bare `vllm serve` with the same model and engine arguments.

Both are driven by vLLM's own load client (`vllm bench serve`: random dataset, fixed seed) at each
concurrency level, one server at a time in the same run, and reported side by side with the ratios.

    python -m benchmarks.chat [--concurrency 1 8 32] [--config configs/dev-cpu.yaml]

Writes benchmarks/results/chat.json and chat.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks._servers import ROOT, app_variants, bare_vllm, engine_setup, serve_app
from serve_app.llm import engine_args

METRICS = [
    "output_throughput",
    "request_throughput",
    "request_goodput",
    "p99_tpot_ms",
    "median_e2el_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "median_tpot_ms",
    "completed",
]


def load_args(doc: str | None):
    """The command line of a one-load-per-server comparison (benchmarks/multi_model.py, lora.py): the load's
    clients, prompts, lengths and seed, and where the results go."""
    import argparse

    from benchmarks._servers import ROOT

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    return p


def run_load(url: str, model: str, tokenizer: str, concurrency: int, num_prompts: int, ns=None,
             dataset_args: list[str] | None = None, goodput: list[str] | None = None, seed: int = 0) -> dict:
    """One `vllm bench serve` run. The dataset is ``dataset_args`` (vllm bench serve's own flags), else the
    random dataset with ``ns.input_len`` / ``ns.output_len``; ``goodput`` are its "metric:ms" SLOs."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if dataset_args is None:
        dataset_args = ["--dataset-name", "random", "--random-input-len", str(ns.input_len),
                        "--random-output-len", str(ns.output_len)]
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", "openai",
            "--base-url", url,
            "--endpoint", "/v1/completions",
            "--model", model,
            "--tokenizer", tokenizer,
            *dataset_args,
            "--ignore-eos",
            "--num-prompts", str(num_prompts),
            "--max-concurrency", str(concurrency),
            "--num-warmups", str(min(concurrency, 8)),
            "--seed", str(ns.seed if ns is not None else seed),
            "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,90,99",
            "--disable-tqdm",
            *(["--goodput", *goodput] if goodput else []),
        ]
    )
    result = main(args)
    out = {k: result.get(k) for k in METRICS}
    out["failed"] = num_prompts - (result.get("completed") or 0)
    out["num_prompts"] = num_prompts
    return out


def _plot(results: dict, names: list[str], levels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("output_throughput", "output tokens/s"),
        ("median_ttft_ms", "TTFT p50 (ms)"),
        ("median_itl_ms", "ITL p50 (ms)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for target in names:
            ys = [results[target][str(c)][key] for c in levels]
            style = "o--" if target == "vllm" else "s-"
            ax.plot(levels, ys, style, label="bare vllm serve" if target == "vllm" else target)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Chat path, same model and engine args: serve_app vs bare vLLM (higher throughput, lower latency is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dev-cpu.yaml")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--prompts-per-client", type=int, default=4, help="num prompts = max(16, this x concurrency)")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:K=V,K=V",
        help="also run the app with these environment variables (e.g. Ray Serve feature flags)",
    )
    ns = p.parse_args()

    settings, model_dir, cli = engine_setup(ns.config)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)

    targets = [
        ("vllm", lambda: bare_vllm(cli, engine_args.env(settings.engine), out / "chat-vllm.log")),
        ("serve_app", lambda: serve_app(ns.config, out / "chat-serve_app.log")),
    ]
    variants, more = app_variants(ns.variant, ns.config, out, "chat")
    targets += more
    results: dict = {name: {} for name, _ in targets}
    results["ready_s"] = {}
    for name, start in targets:
        with start() as (url, ready_s):
            results["ready_s"][name] = round(ready_s, 1)
            print(f"== {name} ready in {ready_s:.1f}s at {url}", flush=True)
            for c in ns.concurrency:
                n = max(16, ns.prompts_per_client * c)
                results[name][str(c)] = run_load(url, settings.model.name, model_dir, c, n, ns)

    ours = [name for name, _ in targets if name != "vllm"]
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for name in ours:
        for c in ns.concurrency:
            a, b = results[name][str(c)], results["vllm"][str(c)]
            ratios.setdefault(name, {})[str(c)] = {
                "throughput_ratio": round(a["output_throughput"] / b["output_throughput"], 3),
                "added_ttft_p50_ms": round(a["median_ttft_ms"] - b["median_ttft_ms"], 1),
                "added_itl_p50_ms": round(a["median_itl_ms"] - b["median_itl_ms"], 2),
            }
    report = {
        "what": "serve_app vs bare vLLM, same model and engine args, vllm bench serve random dataset",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "engine_args": cli[2:],
        "input_len": ns.input_len,
        "output_len": ns.output_len,
        "seed": ns.seed,
        "variants": variants,
        "results": results,
        "ratios": ratios,
    }
    (out / "chat.json").write_text(json.dumps(report, indent=2))
    _plot(results, ["vllm", *ours], ns.concurrency, out / "chat.png")

    print("\n| conc | target | out tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for c in ns.concurrency:
        for name in ["vllm", *ours]:
            r = results[name][str(c)]
            print(
                f"| {c} | {name} | {r['output_throughput']:.1f} | {r['median_ttft_ms']:.0f} ms | {r['p99_ttft_ms']:.0f} ms"
                f" | {r['median_itl_ms']:.1f} ms | {r['p99_itl_ms']:.1f} ms | {r['failed']} |"
            )
    print("\nratios (serve_app vs bare vLLM):", json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
