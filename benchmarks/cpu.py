"""Where the machine's CPU goes on the chat path: bare `vllm serve` vs the app, same load, same engine.

Every process on the machine is accounted for while `vllm bench serve` drives 8 clients (random dataset,
256 in / 64 out), grouped by role: the engine (vLLM's engine-core and worker processes), the model's
front end (bare: vLLM's API server; the app: the LLM replica running vLLM's AsyncLLM and serving layer),
the ingress replica, HTTP forwarding (HAProxy and Serve's proxy), Serve's and the app's controllers, Ray's
own daemons, the load client, everything else. Also per core: how busy each core was, and how often the
engine was preempted (involuntary context switches of its processes), which is what costs throughput on
a machine whose cores the engine shares.

    python -m benchmarks.cpu [--variant NAME:ENV=VAL,...] [--prompts 96]

Writes benchmarks/results/cpu.json (the suite's `cpu` scenario writes into its own folder).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

# Role of a process, by its command line; first match wins.
ROLES = [
    ("engine (vLLM engine core + worker)", ("VLLM::EngineCore", "VLLM::Worker", "EngineCore_DP")),
    ("model front end (vLLM API server / LLM replica)", ("vllm.entrypoints.openai.api_server", ":LLMServer")),
    ("ingress replica", (":Ingress",)),
    ("other app replicas (embedder, store, agent)", ("ServeReplica:",)),
    ("HTTP forwarding (HAProxy, Serve proxy)", ("haproxy", "ProxyActor", "HAProxyManager")),
    ("controllers (Serve, releases) and the app's driver", ("ServeController", "ReleaseController", "serve_app.cli")),
    ("Ray daemons (GCS, raylet, dashboard, agents, monitors)", ("gcs_server", "raylet", "dashboard", "DashboardAgent",
                                                               "RuntimeEnvAgent", "log_monitor", "monitor.py",
                                                               "ray/_private", "ray::")),
]
LOAD = "load client (vllm bench serve)"
OTHER = "other processes on the machine"
ENGINE = ROLES[0][0]


def _short(cmdline: str) -> str:
    """A command line without directories (no paths of the machine in the results)."""
    return re.sub(r"(?<![\w.])/\S*/", "", cmdline)[:100].strip()


def _role(cmdline: str) -> str:
    for name, needles in ROLES:
        if any(n in cmdline for n in needles):
            return name
    return OTHER


def snapshot() -> dict[int, dict[str, Any]]:
    import psutil

    me = psutil.Process().pid
    procs = {}
    for p in psutil.process_iter(["pid", "cmdline", "name", "create_time"]):
        try:
            t = p.cpu_times()
            cmd = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
            procs[p.pid] = {
                "role": LOAD if p.pid == me else _role(cmd),
                "cpu": t.user + t.system,
                "involuntary": p.num_ctx_switches().involuntary,
                "created": p.info["create_time"],
                "cmd": _short(cmd),
            }
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return procs


def measure(run: Callable[[], dict]) -> dict[str, Any]:
    """Run ``run`` (the load) and account the CPU every process used meanwhile."""
    import psutil

    before, cores0, t0 = snapshot(), psutil.cpu_times(percpu=True), time.time()
    load = run()
    after, cores1, wall = snapshot(), psutil.cpu_times(percpu=True), time.time() - t0
    roles: dict[str, float] = {}
    procs: list[tuple[float, str]] = []
    involuntary = 0
    for pid, a in after.items():
        b = before.get(pid)
        if b is not None and b["created"] != a["created"]:
            b = None  # a pid reused by a new process
        used = a["cpu"] - (b["cpu"] if b else 0.0)
        roles[a["role"]] = roles.get(a["role"], 0.0) + used
        procs.append((used, a["cmd"]))
        if a["role"] == ENGINE:
            involuntary += a["involuntary"] - (b["involuntary"] if b else 0)
    busy = []
    for c0, c1 in zip(cores0, cores1, strict=True):
        total = sum(c1) - sum(c0)
        idle = (c1.idle + getattr(c1, "iowait", 0.0)) - (c0.idle + getattr(c0, "iowait", 0.0))
        busy.append(round(100 * (1 - idle / total), 1) if total > 0 else None)
    return {
        "wall_s": round(wall, 1),
        "cpu_percent_of_a_core": {k: round(100 * v / wall, 1) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])},
        "total_cpu_percent_of_a_core": round(100 * sum(roles.values()) / wall, 1),
        "core_busy_percent": busy,
        "engine_preemptions_per_s": round(involuntary / wall, 1),
        "busiest_processes": [{"cpu_pct": round(100 * u / wall, 1), "cmd": c} for u, c in sorted(procs, reverse=True)[:15]],
        "output_tok_per_s": load["output_throughput"],
        "ttft_p50_ms": load["median_ttft_ms"],
        "itl_p50_ms": load["median_itl_ms"],
        "failed": load["failed"],
    }


def compare(targets: Sequence[tuple[str, Callable[[], AbstractContextManager]]], model: str, tokenizer: str,
            prompts: int, note: Callable[[str], None] = print) -> dict[str, Any]:
    """Each target in turn (one engine at a time): warm it up, then measure the 8-client load."""
    from benchmarks.chat import run_load

    dataset = ["--dataset-name", "random", "--random-input-len", "256", "--random-output-len", "64"]
    results: dict[str, Any] = {}
    for name, start in targets:
        with start() as (url, ready_s):
            run_load(url, model, tokenizer, 8, 8, dataset_args=dataset, seed=1)  # warm-up, not measured
            results[name] = measure(lambda: run_load(url, model, tokenizer, 8, prompts, dataset_args=dataset))
            r = results[name]
            note(f"cpu {name}: {r['output_tok_per_s']:.1f} tok/s, machine {r['total_cpu_percent_of_a_core']} % of a "
                 f"core, cores {r['core_busy_percent']} % busy, engine preempted {r['engine_preemptions_per_s']}/s")
    return results


def rows_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per role: % of a core per target (the figures the report tables and plots)."""
    names = list(results)
    roles = [r for r, _ in ROLES] + [LOAD, OTHER]
    rows = []
    for role in roles:
        vals = {n: results[n]["cpu_percent_of_a_core"].get(role, 0.0) for n in names}
        if any(vals.values()):
            rows.append({"role": role, **{f"{n}_cpu_pct": v for n, v in vals.items()}})
    rows.append({"role": "total", **{f"{n}_cpu_pct": results[n]["total_cpu_percent_of_a_core"] for n in names}})
    return rows


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows_of(results) if r["role"] != "total"]
    names = list(results)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(names)
    ys = range(len(rows))
    for i, n in enumerate(names):
        tok = results[n]["output_tok_per_s"]
        ax.barh([y + i * width for y in ys], [r[f"{n}_cpu_pct"] for r in rows], width, label=f"{n} ({tok:.0f} tok/s)")
    ax.set_yticks([y + width * (len(names) - 1) / 2 for y in ys], [r["role"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("% of one core during the 8-client chat load (2 cores = 200 %)")
    ax.set_title("Where the machine's CPU goes: bare vLLM vs serve_app, same load")
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    from benchmarks._servers import ROOT, app_variants, bare_vllm, engine_setup, serve_app
    from serve_app.llm import engine_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dev-cpu.yaml")
    p.add_argument("--prompts", type=int, default=96)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--no-bare", action="store_true", help="skip bare vLLM (compare app variants only)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:K=V,K=V",
                   help="also run the app with these environment variables")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all targets (run-to-run spread)")
    ns = p.parse_args()
    settings, model_dir, cli = engine_setup(ns.config)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [] if ns.no_bare else [("vllm", lambda: bare_vllm(cli, engine_args.env(settings.engine), out / "cpu-vllm.log"))]
    targets.append(("serve_app", lambda: serve_app(ns.config, out / "cpu-serve_app.log")))
    variants, more = app_variants(ns.variant, ns.config, out, "cpu")
    targets += more
    if ns.repeat > 1:  # alternate the targets round by round: drift of the machine hits all of them alike
        targets = [(f"{n}.{r + 1}", start) for r in range(ns.repeat) for n, start in targets]
    results = compare(targets, settings.model.name, str(model_dir), ns.prompts)
    report = {"what": __doc__.strip().splitlines()[0], "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "variants": variants, "results": results, "rows": rows_of(results)}
    (out / "cpu.json").write_text(json.dumps(report, indent=1))
    plot(results, out / "cpu.png")
    print(json.dumps(report["rows"], indent=1))


if __name__ == "__main__":
    main()
