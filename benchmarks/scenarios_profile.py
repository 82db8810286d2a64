"""Suite scenarios that profile the chat path: the machine-wide CPU account (bare vLLM, the app with and
without its engine CPU split) and where the ingress spends its CPU (benchmarks/suite.py runs them)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._servers import bare_vllm, engine_setup, serve_app
from benchmarks.context import Context, pyplot, ratio
from serve_app.config.names import DEFAULT_MODEL_NAME
from serve_app.llm import engine_args

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
    summary: dict[str, Any] = {}
    for name, suffix in (("serve_app", ""), (SHARED, "_without_split")):
        a = results[name]
        summary |= {f"throughput_ratio{suffix}": ratio(a["output_tok_per_s"], b["output_tok_per_s"]),
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
    ("app middleware (auth, body limit, metrics, tracing)", ("serve_app/ingress/middleware/", "ray/util/metrics",
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
             "LLMServer": [psutil.Process(httpx.get(f"{url}/healthz").json()["components"][f"llm:{DEFAULT_MODEL_NAME}"]["pid"])]}
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
                                     for p, c in zip(ps, cpu[name], strict=True)) / wall, 1)
               for name, ps in procs.items()}
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
    rows: list[dict[str, Any]] = [{"part": k, "samples": v, "share": round(v / total, 3)}
                                  for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    plt = pyplot()
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
