"""The benchmark suite: one runner, every scenario measured beside its baseline in the same run.

    serve-app bench [SCENARIO ...] [--quick] [--out DIR]       (also: make bench)

Scenarios, in the order they run (default: all of them):

  chat         the app vs bare `vllm serve` with the same model and engine arguments, driven by vLLM's own
               load client (`vllm bench serve`): concurrency sweep, random and shared-prefix datasets,
               TTFT / TPOT / ITL p50 and p99, throughput, goodput under SLOs
  cpu          where the machine's CPU goes on the chat path at 8 clients, bare vLLM vs the app with and
               without its engine CPU split: every process
               accounted by role (engine, model front end, ingress, HTTP forwarding, controllers, Ray daemons,
               load client), how busy each core was and how often the engine was preempted
  retrieval    embeddings, ingest and search through the app vs the same work in-process
  rag_agent    whole RAG answers (parallel plan vs the same steps one after the other) and agent answers,
               over a concurrency sweep
  overhead     where the ingress spends its CPU on the chat path at 8 clients (py-spy samples grouped into
               HTTP parsing, validation, middleware, the handle call, the streaming relay)
  autoscaling  a step in agent load against a low ongoing-requests target: time until the added replica
               serves, latency before / during / after the step
  rollout      a good release and a bad release (model missing) while chat traffic flows: failed requests,
               time until the previous release serves again

Servers are started here, one engine at a time: bare vLLM then the app for `chat` and again for `cpu` (there
also the app without its engine CPU split, the layout `serve-app run` has without `--isolate-engine-cpus`); a
retrieval-only app for `retrieval`; one app (with an admin key) shared by `rag_agent`, `overhead`,
`autoscaling` and `rollout`. Each scenario writes
benchmarks/results/<date>/<scenario>.json, .csv and .png; the Markdown report with machine, versions and
every ratio goes to the same folder and to benchmarks/results/latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import secrets
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import httpx

from benchmarks._servers import ROOT, bare_vllm, engine_setup, serve_app
from serve_app.admin_client import AdminClient
from serve_app.cli import HelpFormatter
from serve_app.llm import engine_args
from benchmarks.report import machine, report, versions, write_csv

RESULTS = ROOT / "benchmarks" / "results"
# Service-level objectives of the goodput figure (CPU-sized; a GPU deployment would use tighter ones).
SLO = {"ttft": 500, "tpot": 100}


class Context:
    """What a scenario gets: where to write, how big to run, the shared app (started on first use)."""

    def __init__(self, out: Path, quick: bool, config: str, progress, url: str | None = None,
                 admin_key: str | None = None):
        self.out, self.quick, self.config, self.progress = out, quick, config, progress
        self.url, self.admin_key = url, admin_key
        self._stack = ExitStack()
        self._app: dict[str, Any] | None = None

    def app(self) -> dict[str, Any]:
        if self._app is None and self.url:
            # A running app (e.g. on a cluster, the suite submitted as a Ray job): used as it is.
            admin = self._stack.enter_context(AdminClient(self.url, self.admin_key))
            model = httpx.get(f"{self.url}/v1/models").json()["data"][0]["id"]
            self._app = {"url": self.url, "ready_s": 0.0, "admin": admin, "model": model}
        if self._app is None:
            data = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-app-bench-"))
            key = secrets.token_hex(16)
            env = {"SERVE_APP_DATA_DIR": data, "SERVE_APP_ADMIN_KEY": key}
            url, ready_s = self._stack.enter_context(serve_app(self.config, self.out / "app.log", env=env))
            admin = self._stack.enter_context(AdminClient(url, key))
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            self._app = {"url": url, "ready_s": ready_s, "admin": admin, "model": model}
        return self._app

    def close(self) -> None:
        self._stack.close()
        self._app = None

    def note(self, msg: str) -> None:
        self.progress.write(f"[bench] {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- chat


def chat(ctx: Context) -> dict:
    from benchmarks.chat import run_load

    settings, model_dir, cli = engine_setup(ctx.config)
    levels = [1, 8] if ctx.quick else [1, 4, 16, 64]
    datasets = {
        "random": ["--dataset-name", "random", "--random-input-len", "256", "--random-output-len", "64"],
        # Every prompt starts with one of 4 shared 256-token prefixes: vLLM's prefix cache at work.
        "shared-prefix": ["--dataset-name", "prefix_repetition", "--prefix-repetition-prefix-len", "256",
                          "--prefix-repetition-suffix-len", "64", "--prefix-repetition-num-prefixes", "4",
                          "--prefix-repetition-output-len", "64"],
    }
    goodput = [f"{k}:{v}" for k, v in SLO.items()]
    rows, results = [], {}
    targets = [("vllm", lambda: bare_vllm(cli, engine_args.env(settings.engine), ctx.out / "chat-vllm.log")),
               ("serve_app", lambda: serve_app(ctx.config, ctx.out / "chat-serve_app.log"))]
    for name, start in targets:
        with start() as (url, ready_s):
            ctx.note(f"chat: {name} ready in {ready_s:.0f}s")
            for ds, ds_args in datasets.items():
                for c in levels:
                    # 4 requests per client (2 at 64 clients, where one round already takes ~25 s here).
                    n = max(8, (2 if ctx.quick or c > 16 else 4) * c)
                    r = run_load(url, settings.model.name, str(model_dir), c, n, dataset_args=ds_args, goodput=goodput)
                    results[(name, ds, c)] = r
                    rows.append({"target": name, "dataset": ds, "concurrency": c, **r})
                    ctx.note(f"chat {name} {ds} c={c}: {r['output_throughput']:.1f} tok/s, "
                             f"TTFT p50 {r['median_ttft_ms']:.0f} ms, failed {r['failed']}")
    ratios = []
    for ds in datasets:
        for c in levels:
            a, b = results[("serve_app", ds, c)], results[("vllm", ds, c)]
            ratios.append({
                "dataset": ds, "concurrency": c,
                "throughput_ratio": _ratio(a["output_throughput"], b["output_throughput"]),
                "ttft_p50_added_ms": round(a["median_ttft_ms"] - b["median_ttft_ms"], 1),
                "ttft_p99_ratio": _ratio(a["p99_ttft_ms"], b["p99_ttft_ms"]),
                "tpot_p50_ratio": _ratio(a["median_tpot_ms"], b["median_tpot_ms"]),
                "itl_p99_ratio": _ratio(a["p99_itl_ms"], b["p99_itl_ms"]),
                "goodput_ratio": _ratio(a.get("request_goodput"), b.get("request_goodput")),
                "failed": a["failed"] + b["failed"],
            })
    _plot_chat(rows, levels, list(datasets), ctx.out / "chat.png")
    return {"title": "Chat: serve_app vs bare vLLM (vllm bench serve)", "rows": rows, "ratios": ratios,
            "settings": {"engine_args": cli[2:], "levels": levels, "slo_ms": SLO, "datasets": datasets}}


def _plot_chat(rows, levels, datasets, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(len(datasets), 3, figsize=(15, 4 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for target, style in (("vllm", "o--"), ("serve_app", "s-")):
            pts = [r for r in rows if r["target"] == target and r["dataset"] == ds]
            label = "bare vllm serve" if target == "vllm" else target
            # Latency against throughput: each point is one concurrency level.
            axes[i][0].plot([r["output_throughput"] for r in pts], [r["median_ttft_ms"] for r in pts], style, label=label)
            axes[i][1].plot([r["output_throughput"] for r in pts], [r["median_tpot_ms"] for r in pts], style, label=label)
            axes[i][2].plot(levels, [r["p99_ttft_ms"] for r in pts], style, label=label)
        for ax, title in zip(axes[i], ("TTFT p50 (ms) vs output tok/s", "TPOT p50 (ms) vs output tok/s",
                                        "TTFT p99 (ms) by concurrency")):
            ax.set_title(f"{ds}: {title}")
            ax.grid(alpha=0.3)
        axes[i][2].set_xscale("log", base=2)
        axes[i][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# -------------------------------------------------------------------------------------------- retrieval


def retrieval(ctx: Context) -> dict:
    from benchmarks.retrieval import bench_app

    with tempfile.TemporaryDirectory(prefix="serve-app-bench-") as tmp:
        n_texts, docs = (1024, 16) if ctx.quick else (4096, 64)
        r = bench_app(Path(tmp), ctx.out, n_texts, 8, 16, docs, n_queries=100 if ctx.quick else 300)
    ratios = [{"figure": "embeddings texts/s (8 clients x 16 texts)", "app": r["embed_app_texts_per_s"],
               "in_process": r["embed_inprocess_texts_per_s"], "ratio": _ratio(r["embed_app_texts_per_s"], r["embed_inprocess_texts_per_s"])},
              {"figure": "ingest chunks/s", "app": r["ingest_app_chunks_per_s"], "in_process": r["ingest_inprocess_chunks_per_s"],
               "ratio": _ratio(r["ingest_app_chunks_per_s"], r["ingest_inprocess_chunks_per_s"])},
              {"figure": "search p50 ms (embed + top-5)", "app": r["search_app_p50_ms"], "in_process": r["search_inprocess_p50_ms"],
               "ratio": _ratio(r["search_app_p50_ms"], r["search_inprocess_p50_ms"])},
              {"figure": "search p99 ms", "app": r["search_app_p99_ms"], "in_process": r["search_inprocess_p99_ms"],
               "ratio": _ratio(r["search_app_p99_ms"], r["search_inprocess_p99_ms"])}]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh([x["figure"] for x in ratios], [x["ratio"] for x in ratios])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_title("Retrieval: through the app / in-process (throughput: higher is better; latency: lower)")
    fig.tight_layout()
    fig.savefig(ctx.out / "retrieval.png", dpi=100)
    return {"title": "Retrieval: through the app vs in-process", "rows": [r], "ratios": ratios}


# -------------------------------------------------------------------------------------------- rag_agent


def rag_agent(ctx: Context) -> dict:
    from benchmarks.rag_agent import TASKS, agent_bench, ingest, plot, rag_bench

    app = ctx.app()
    url = app["url"]
    docs = ingest(url, 50 if ctx.quick else 200)
    rag, agent = [], []
    for c in [1, 4]:
        r = asyncio.run(rag_bench(url, 6 if ctx.quick else 12, c))
        rag.append(r)
        ctx.note(f"rag c={c}: parallel/sequential e2e {r['e2e_ratio_parallel_over_sequential']:.2f}")
    httpx.post(f"{url}/v1/agent", json={"task": TASKS[0], "max_steps": 1}, timeout=600)  # warm the grammar cache
    for c, n in ([(1, 4), (4, 8)] if ctx.quick else [(1, 6), (4, 12), (16, 32)]):
        a = asyncio.run(agent_bench(url, n, c))
        agent.append(a)
        ctx.note(f"agent c={c}: {a['answers_per_s']:.2f} answers/s, p50 {a['latency_p50_ms']:.0f} ms")
    plot({"model": app["model"], "rag": rag, "agent": agent}, ctx.out / "rag_agent.png")
    rows = [{"kind": "rag", "plan": plan, "concurrency": r["concurrency"], **r[plan]} for r in rag
            for plan in ("parallel", "sequential")]
    rows += [{"kind": "agent", **{k: v for k, v in a.items() if k != "finish_reasons"}} for a in agent]
    ratios = [{"concurrency": r["concurrency"], "rag_e2e_p50_parallel_over_sequential": round(r["e2e_ratio_parallel_over_sequential"], 3),
               "rag_ttft_p50_parallel_over_sequential": round(r["ttft_ratio_parallel_over_sequential"], 3),
               "failed": r["parallel"]["failed"] + r["sequential"]["failed"]} for r in rag]
    ratios += [{"concurrency": a["concurrency"], "agent_answers_per_s": round(a["answers_per_s"], 3),
                "agent_p50_ms": round(a["latency_p50_ms"] or 0), "agent_p99_ms": round(a["latency_p99_ms"] or 0),
                "failed": a["failed"]} for a in agent]
    return {"title": "RAG (parallel vs sequential plan) and agent answers", "rows": rows, "ratios": ratios,
            "settings": {"documents": docs}}


# ------------------------------------------------------------------------------------------ autoscaling


def autoscaling(ctx: Context) -> dict:
    """A step from 1 to 8 concurrent agent runs against target_ongoing_requests 2 on the Agent deployment
    (1..2 replicas, num_cpus 0): when the second replica is running, and the latency of runs started before,
    during and after the scale-up."""
    from benchmarks.rag_agent import TASKS

    app = ctx.app()
    admin, url = app["admin"], app["url"]
    base = admin.current_config()
    config = copy.deepcopy(base)
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "Agent":
            d["autoscaling_config"] = {**d.get("autoscaling_config", {}), "min_replicas": 1, "max_replicas": 2,
                                       "target_ongoing_requests": 2, "upscale_delay_s": 2, "downscale_delay_s": 20,
                                       "metrics_interval_s": 1, "look_back_period_s": 2}
    _deploy(admin, config, "autoscaling benchmark: low agent target")
    records: list[dict] = []

    async def client(c: httpx.AsyncClient, stop: float, i: int):
        while time.time() < stop:
            t = time.time()
            r = await c.post("/v1/agent", json={"task": TASKS[i % len(TASKS)], "max_steps": 2})
            records.append({"t": t, "end": time.time(), "ok": r.status_code == 200})

    async def drive():
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            t0 = time.time()
            base_load = asyncio.ensure_future(client(c, t0 + 60, 0))
            await asyncio.sleep(15)
            step_at = time.time()
            step = [asyncio.ensure_future(client(c, step_at + 30, i)) for i in range(1, 8)]
            replicas_at = None
            while replicas_at is None and time.time() < step_at + 120:
                if _replicas(admin, "Agent") >= 2:
                    replicas_at = time.time()
                await asyncio.sleep(0.5)
            await asyncio.gather(base_load, *step)
            return t0, step_at, replicas_at

    try:
        t0, step_at, replicas_at = asyncio.run(drive())
        down_at = None
        deadline = time.time() + 120
        while time.time() < deadline:
            if _replicas(admin, "Agent") == 1:
                down_at = time.time()
                break
            time.sleep(1)
    finally:
        _deploy(admin, base, "autoscaling benchmark: back to the configured target")

    def lat(rows):
        xs = sorted(r["end"] - r["t"] for r in rows if r["ok"])
        return round(xs[len(xs) // 2] * 1000) if xs else None

    before = [r for r in records if r["end"] < step_at]
    during = [r for r in records if r["t"] >= step_at and (replicas_at is None or r["t"] < replicas_at)]
    after = [r for r in records if replicas_at is not None and r["t"] >= replicas_at]
    summary = {"step_to_second_replica_running_s": None if replicas_at is None else round(replicas_at - step_at, 1),
               "scaled_back_to_1_after_load_s": None if down_at is None else round(down_at - step_at, 1),
               "latency_p50_ms_before": lat(before), "latency_p50_ms_during_scale_up": lat(during),
               "latency_p50_ms_after_scale_up": lat(after), "runs": len(records),
               "failed": sum(not r["ok"] for r in records)}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([r["t"] - t0 for r in records], [r["end"] - r["t"] for r in records], ".", label="agent run latency (s)")
    ax.axvline(step_at - t0, color="tab:orange", ls="--", label="load step 1 -> 8 clients")
    if replicas_at:
        ax.axvline(replicas_at - t0, color="tab:green", ls="--", label="second replica running")
    ax.set_xlabel("seconds (by run start)")
    ax.legend()
    ax.set_title("Autoscaling: a step in agent load")
    fig.tight_layout()
    fig.savefig(ctx.out / "autoscaling.png", dpi=100)
    return {"title": "Autoscaling spike (Agent deployment, target_ongoing_requests 2)", "rows": records,
            "ratios": [summary]}


# ---------------------------------------------------------------------------------------------- rollout


def rollout(ctx: Context) -> dict:
    from benchmarks.releases import plot, rollout as one_rollout

    app = ctx.app()
    admin, url, model = app["admin"], app["url"], app["model"]
    base = admin.current_config()
    good = copy.deepcopy(base)
    good["applications"][0]["args"]["rag"]["default_top_k"] = 3
    bad = copy.deepcopy(base)
    bad["applications"][0]["args"]["model"].update(source="/nonexistent/model", served_name=model)
    runs = [one_rollout(url, admin, model, good, "good release (a RAG setting: only the ingress is replaced)"),
            one_rollout(url, admin, model, bad, "bad release (LLM model path does not exist)")]
    plot({"rollouts": runs}, ctx.out / "rollout.png")
    rows = [{"rollout": r["label"], "since_deploy_s": round(x["t"] - r["deploy_at"], 3), **x}
            for r in runs for x in r["records"]]
    ratios = [{k: v for k, v in r.items() if k not in ("records", "deploy_at", "settled_at")} for r in runs]
    return {"title": "Rollouts under load (4 chat clients, half streaming)", "rows": rows, "ratios": ratios}


# -------------------------------------------------------------------------------------------------- cpu

SHARED = "serve_app_without_split"


def cpu(ctx: Context) -> dict:
    from benchmarks import cpu as cpu_share

    settings, model_dir, cli = engine_setup(ctx.config)
    # One engine at a time: the shared app (if an earlier scenario started it) is stopped first.
    ctx.close()
    # The app twice: with the engine CPU split (`--isolate-engine-cpus`, as every other scenario runs it) and
    # in the layout `serve-app run` uses without the option, so each run shows what the split buys.
    targets = [("vllm", lambda: bare_vllm(cli, engine_args.env(settings.engine), ctx.out / "cpu-vllm.log")),
               ("serve_app", lambda: serve_app(ctx.config, ctx.out / "cpu-serve_app.log")),
               (SHARED, lambda: serve_app(ctx.config, ctx.out / f"cpu-{SHARED}.log", {"SERVE_APP_ISOLATE_ENGINE_CPUS": "0"}))]
    results = cpu_share.compare(targets, settings.model.name, str(model_dir), 48 if ctx.quick else 64, ctx.note)
    cpu_share.plot(results, ctx.out / "cpu.png")
    b = results["vllm"]
    summary = {}
    for name, suffix in (("serve_app", ""), (SHARED, "_without_split")):
        a = results[name]
        summary |= {f"throughput_ratio{suffix}": _ratio(a["output_tok_per_s"], b["output_tok_per_s"]),
                    f"ttft_p50_added_ms{suffix}": round(a["ttft_p50_ms"] - b["ttft_p50_ms"], 1)}
    summary |= {f"machine_cpu_pct_{n}": r["total_cpu_percent_of_a_core"] for n, r in results.items()}
    summary |= {f"engine_preemptions_per_s_{n}": r["engine_preemptions_per_s"] for n, r in results.items()}
    summary |= {f"core_busy_pct_{n}": r["core_busy_percent"] for n, r in results.items()}
    return {"title": "Where the machine's CPU goes (chat path, 8 clients): bare vLLM, serve_app with its engine "
                     f"CPU split (`--isolate-engine-cpus`) and without it ({SHARED})",
            "rows": cpu_share.rows_of(results), "summary": summary, "results": results,
            "ratios": cpu_share.rows_of(results)}


# --------------------------------------------------------------------------------------------- overhead

# Where an ingress CPU sample is spent, by the innermost frame that names one of these (first match wins).
PARTS = [
    ("streaming relay", ("relay_stream", "_observed", "StreamingResponse", "sse_events", "stream_response")),
    ("handle call (Serve router, replica result)", ("ray/serve/handle.py", "ray/serve/_private/router.py",
                                                   "replica_result.py", "request_router", "ray/serve/_private/replica.py")),
    ("validation (pydantic, request models, limits)", ("pydantic", "protocol.py", "check_sampling", "charge_tokens",
                                                        "fastapi/dependencies", "fastapi/_compat")),
    ("app middleware (auth, body limit, metrics, tracing)", ("serve_app/ingress/middleware.py", "ray/util/metrics",
                                                             "opentelemetry")),
    ("HTTP parse and response writing (Starlette / FastAPI)", ("starlette/", "fastapi/", "uvicorn", "h11", "httptools")),
    ("Ray core and the event loop", ("ray/_private", "ray/_raylet", "asyncio/", "grpc", "ray/serve/_private")),
    # A stack that ends in Thread.run is a thread busy in native code: Ray's core worker threads.
    ("Ray core and the event loop", ("threading.py",)),
]


def _part(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in PARTS:
            if any(n in frame for n in needles):
                return name
    return "other"


def overhead(ctx: Context) -> dict:
    """Where the ingress spends its CPU on the chat path at 8 clients: py-spy samples of the Ingress replica
    (and, for scale, the LLM replica) during a `vllm bench serve` run, grouped by the innermost frame."""
    import shutil
    import subprocess

    import psutil

    from benchmarks.chat import run_load

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    app = ctx.app()
    url = app["url"]
    settings, model_dir, _ = engine_setup(ctx.config)
    procs = {"Ingress": [p for p in psutil.process_iter(["cmdline"])
                         if " ".join(p.info["cmdline"] or []).startswith("ray::ServeReplica:serve_app:Ingress")],
             "LLMServer": [psutil.Process(httpx.get(f"{url}/healthz").json()["components"]["llm"]["pid"])]}
    duration = 15 if ctx.quick else 30
    profiles: dict[str, Path] = {}
    spies = []
    for name, ps in procs.items():
        for i, proc in enumerate(ps):
            path = ctx.out / f"overhead-{name}-{i}.txt"
            profiles[f"{name}-{i}"] = path
            spies.append(subprocess.Popen([spy, "record", "--pid", str(proc.pid), "--duration", str(duration),
                                           "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(path)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    cpu = {name: [p.cpu_times() for p in ps] for name, ps in procs.items()}
    # The load runs here (vllm bench serve wants the main thread); the samplers are subprocesses.
    t0 = time.time()
    load = run_load(url, settings.model.name, str(model_dir), 8, 64 if ctx.quick else 96,
                    dataset_args=["--dataset-name", "random", "--random-input-len", "256", "--random-output-len", "64"])
    wall = time.time() - t0
    cpu_pct = {name: round(100 * sum((p.cpu_times().user + p.cpu_times().system) - (c.user + c.system)
                                     for p, c in zip(ps, cpu[name])) / wall, 1) for name, ps in procs.items()}
    for spy_proc in spies:
        spy_proc.wait(duration + 60)
    counts: dict[str, int] = {}
    for key, path in profiles.items():
        if not key.startswith("Ingress") or not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if n.isdigit():
                part = _part(stack)
                counts[part] = counts.get(part, 0) + int(n)
    total = sum(counts.values()) or 1
    rows = [{"part": k, "samples": v, "share": round(v / total, 3)} for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh([r["part"] for r in rows][::-1], [100 * r["share"] for r in rows][::-1])
    ax.set_xlabel("% of the ingress's busy samples")
    ax.set_title(f"Ingress CPU on the chat path, 8 clients (ingress {cpu_pct['Ingress']} % CPU, LLM replica {cpu_pct['LLMServer']} %)")
    fig.tight_layout()
    fig.savefig(ctx.out / "overhead.png", dpi=100)
    return {"title": "Where the ingress time goes (chat path, 8 clients, py-spy)", "rows": rows,
            "summary": {"process_cpu_percent_" + k: v for k, v in cpu_pct.items()}
            | {"load_s": round(wall, 1), "sampled_s": duration, "output_tok_per_s": load["output_throughput"]},
            "ratios": rows}


# ------------------------------------------------------------------------------------------------ report


# Scenarios that start servers on this machine (a baseline, or a process to profile).
LOCAL_ONLY = {"chat", "cpu", "retrieval", "overhead"}

SCENARIOS: dict[str, Callable[[Context], dict]] = {
    "chat": chat, "cpu": cpu, "retrieval": retrieval, "rag_agent": rag_agent, "overhead": overhead, "autoscaling": autoscaling,
    "rollout": rollout,
}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _deploy(admin: AdminClient, config: dict, note: str) -> dict:
    from benchmarks.releases import FOLLOW_TIMEOUT_S

    rel = admin.follow(admin.deploy(config, note)["release"], FOLLOW_TIMEOUT_S)
    if rel["status"] != "good":
        raise RuntimeError(f"release for the benchmark failed: {rel['outcome']}")
    return rel


def _replicas(admin: AdminClient, name: str) -> int:
    try:
        return admin.status()["deployments"][name]["running_replicas"]
    except (httpx.HTTPError, KeyError, ValueError):
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="serve-app bench", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of: {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="smaller sweeps (a smoke run, minutes)")
    ap.add_argument("--config", default="configs/dev-cpu.yaml", help="Serve config file of the apps the suite starts")
    ap.add_argument("--out", default=None, help="result folder (default: benchmarks/results/<date>)")
    ap.add_argument("--report-only", action="store_true", help="run nothing: rebuild the report from the JSON "
                    "files already in the result folder")
    ap.add_argument("--url", default=None, help="measure this running app instead of starting one (rag_agent, "
                    "autoscaling, rollout; the admin key from $SERVE_APP_ADMIN_KEY); chat, retrieval and overhead "
                    "start their own servers and are refused with --url")
    ns = ap.parse_args(argv)
    if ns.url and set(ns.scenarios or SCENARIOS) & LOCAL_ONLY:
        ap.error(f"with --url choose among: {', '.join(n for n in SCENARIOS if n not in LOCAL_ONLY)}")
    unknown = sorted(set(ns.scenarios) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    names = [] if ns.report_only else [n for n in SCENARIOS if n in (ns.scenarios or SCENARIOS)]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = Path(ns.out) if ns.out else RESULTS / time.strftime("%Y-%m-%d")
    out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    results: dict[str, dict] = {}
    t_all = time.time()
    with tqdm(total=len(names), desc="serve-app bench", unit="scenario", file=sys.stderr) as bar:
        ctx = Context(out, ns.quick, ns.config, bar, ns.url, os.environ.get("SERVE_APP_ADMIN_KEY"))
        try:
            for name in names:
                bar.set_postfix_str(name)
                t = time.time()
                try:
                    res = SCENARIOS[name](ctx)
                except Exception as exc:  # noqa: BLE001 - one failed scenario must not lose the others
                    bar.write(f"[bench] {name} failed: {exc!r}", file=sys.stderr)
                    res = {"title": name, "error": repr(exc)[:500]}
                res["seconds"] = time.time() - t
                results[name] = res
                (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
                if "rows" in res:
                    write_csv(res["rows"], out / f"{name}.csv")
                bar.update(1)
        finally:
            ctx.close()
    # Scenarios not run this time but measured earlier into the same folder stay in the report.
    for name in SCENARIOS:
        earlier = out / f"{name}.json"
        if name not in results and earlier.exists():
            res = json.loads(earlier.read_text())
            res["title"] = f"{res.get('title', name)} (earlier run into this folder)"
            results[name] = res
    results = {name: results[name] for name in SCENARIOS if name in results}
    meta = {"started": started, "total_s": time.time() - t_all, "machine": machine(), "versions": versions(),
            "command": "serve-app bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "app": (f"the running app at {ns.url}" if ns.url else
                    "started by the suite as `serve-app run --isolate-engine-cpus` (benchmarks/_servers.py); "
                    f"the cpu scenario measures it without the option too ({SHARED})")}
    text = report(results, meta, out)
    (out / "report.md").write_text(text)
    # latest.md sits in benchmarks/results/: its links point into the run's folder.
    (RESULTS / "latest.md").write_text(text.replace("](", f"]({os.path.relpath(out, RESULTS)}/"))
    print(f"wrote {out}/ and {RESULTS / 'latest.md'}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
