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
  rag_agent    whole RAG answers vs the plain search-then-chat pipeline a user writes (benchmarks/rag.py),
               /v1/search vs the same search in-process, and agent answers over a concurrency sweep
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
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks._servers import bare_vllm, engine_setup, serve_app
from benchmarks.context import RESULTS, SLO, Context, pyplot, ratio
from benchmarks.report import machine, report, versions, write_csv
from benchmarks.scenarios_ops import autoscaling, rollout
from benchmarks.scenarios_profile import SHARED, cpu, overhead
from serve_app.cli import HelpFormatter
from serve_app.llm import engine_args

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
                "throughput_ratio": ratio(a["output_throughput"], b["output_throughput"]),
                "ttft_p50_added_ms": round(a["median_ttft_ms"] - b["median_ttft_ms"], 1),
                "ttft_p99_ratio": ratio(a["p99_ttft_ms"], b["p99_ttft_ms"]),
                "tpot_p50_ratio": ratio(a["median_tpot_ms"], b["median_tpot_ms"]),
                "itl_p99_ratio": ratio(a["p99_itl_ms"], b["p99_itl_ms"]),
                "goodput_ratio": ratio(a.get("request_goodput"), b.get("request_goodput")),
                "failed": a["failed"] + b["failed"],
            })
    _plot_chat(rows, levels, list(datasets), ctx.out / "chat.png")
    return {"title": "Chat: serve_app vs bare vLLM (vllm bench serve)", "rows": rows, "ratios": ratios,
            "settings": {"engine_args": cli[2:], "levels": levels, "slo_ms": SLO, "datasets": datasets}}


def _plot_chat(rows, levels, datasets, path: Path) -> None:
    plt = pyplot()
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
                                        "TTFT p99 (ms) by concurrency"), strict=True):
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
               "in_process": r["embed_inprocess_texts_per_s"], "ratio": ratio(r["embed_app_texts_per_s"], r["embed_inprocess_texts_per_s"])},
              {"figure": "ingest chunks/s", "app": r["ingest_app_chunks_per_s"], "in_process": r["ingest_inprocess_chunks_per_s"],
               "ratio": ratio(r["ingest_app_chunks_per_s"], r["ingest_inprocess_chunks_per_s"])},
              {"figure": "search p50 ms (embed + top-5)", "app": r["search_app_p50_ms"], "in_process": r["search_inprocess_p50_ms"],
               "ratio": ratio(r["search_app_p50_ms"], r["search_inprocess_p50_ms"])},
              {"figure": "search p99 ms", "app": r["search_app_p99_ms"], "in_process": r["search_inprocess_p99_ms"],
               "ratio": ratio(r["search_app_p99_ms"], r["search_inprocess_p99_ms"])}]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh([x["figure"] for x in ratios], [x["ratio"] for x in ratios])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_title("Retrieval: through the app / in-process (throughput: higher is better; latency: lower)")
    fig.tight_layout()
    fig.savefig(ctx.out / "retrieval.png", dpi=100)
    return {"title": "Retrieval: through the app vs in-process", "rows": [r], "ratios": ratios}


# -------------------------------------------------------------------------------------------- rag_agent


def rag_agent(ctx: Context) -> dict:
    from benchmarks.rag import load_corpus, search_speed, side_by_side
    from benchmarks.rag_agent import TASKS, agent_bench, ingest

    app = ctx.app()
    url = app["url"]
    # RAG first, on the RAG corpus alone: the in-process search of search_speed holds just these chunks, so
    # the app's store must hold the same ones when the two are compared.
    corpus = load_corpus()
    httpx.post(f"{url}/v1/documents", json={"documents": corpus["documents"]}, timeout=600).raise_for_status()
    rounds = 1 if ctx.quick else 3
    rag = []
    for c in [1, 4]:
        r = asyncio.run(side_by_side(url, corpus["questions"], rounds, 4, 128, c, [None], ctx.config))
        rag.append(r)
        plain, ours = r["arms"]["plain_budgeted"], r["arms"]["rag_default"]
        ctx.note(f"rag c={c}: rag/plain (same prompt) TTFT p50 {ratio(ours['ttft_p50_ms'], plain['ttft_p50_ms'])}, "
                 f"e2e p50 {ratio(ours['e2e_p50_ms'], plain['e2e_p50_ms'])}")
    search = search_speed(url, corpus, corpus["questions"], 3 if ctx.quick else 10, 4)
    ctx.note(f"search p50 app/in-process {ratio(search['app_p50_ms'], search['inprocess_p50_ms'])}")
    docs = ingest(url, 50 if ctx.quick else 200)
    agent = []
    httpx.post(f"{url}/v1/agent", json={"task": TASKS[0], "max_steps": 1}, timeout=600)  # warm the grammar cache
    for c, n in ([(1, 4), (4, 8)] if ctx.quick else [(1, 6), (4, 12), (16, 32)]):
        a = asyncio.run(agent_bench(url, n, c))
        agent.append(a)
        ctx.note(f"agent c={c}: {a['answers_per_s']:.2f} answers/s, p50 {a['latency_p50_ms']:.0f} ms")
    _plot_rag_agent(app["model"], rag, agent, ctx.out / "rag_agent.png")
    rows = [{"kind": "rag", "arm": name, "concurrency": r["concurrency"], **arm} for r in rag
            for name, arm in r["arms"].items()]
    rows += [{"kind": "search", **search}]
    rows += [{"kind": "agent", **{k: v for k, v in a.items() if k != "finish_reasons"}} for a in agent]
    ratios = []
    for r in rag:
        plain, careful, ours = r["arms"]["plain"], r["arms"]["plain_budgeted"], r["arms"]["rag_default"]
        ratios.append({"concurrency": r["concurrency"],
                       "rag_ttft_p50_over_plain_same_prompt": ratio(ours["ttft_p50_ms"], careful["ttft_p50_ms"]),
                       "rag_e2e_p50_over_plain_same_prompt": ratio(ours["e2e_p50_ms"], careful["e2e_p50_ms"]),
                       "rag_ttft_p50_over_plain_whole_hits": ratio(ours["ttft_p50_ms"], plain["ttft_p50_ms"]),
                       "rag_degraded": ours["degraded"],
                       "failed": ours["failed"] + plain["failed"] + careful["failed"]})
    ratios.append({"search_p50_app_over_inprocess": ratio(search["app_p50_ms"], search["inprocess_p50_ms"]),
                   "search_p90_app_over_inprocess": ratio(search["app_p90_ms"], search["inprocess_p90_ms"])})
    ratios += [{"concurrency": a["concurrency"], "agent_answers_per_s": round(a["answers_per_s"], 3),
                "agent_p50_ms": round(a["latency_p50_ms"] or 0), "agent_p99_ms": round(a["latency_p99_ms"] or 0),
                "failed": a["failed"]} for a in agent]
    return {"title": "RAG (vs the plain search-then-chat pipeline) and agent answers", "rows": rows,
            "ratios": ratios, "settings": {"rag_documents": len(corpus["documents"]),
                                           "rag_questions": len(corpus["questions"]), "rounds": rounds,
                                           "top_k": 4, "max_tokens": 128, "agent_documents": docs}}


def _plot_rag_agent(model: str, rag: list[dict], agent: list[dict], path: Path) -> None:
    from benchmarks.rag_agent import plot_agent

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    labels, plain, ours = [], [], []
    for r in rag:
        for metric in ("ttft_p50_ms", "e2e_p50_ms"):
            labels.append(f"{metric.replace('_p50_ms', '')}\nc={r['concurrency']}")
            plain.append(r["arms"]["plain"][metric] or 0)
            ours.append(r["arms"]["rag_default"][metric] or 0)
    x = list(range(len(labels)))
    axes[0].bar([i - 0.2 for i in x], plain, 0.4, label="/v1/search then chat")
    axes[0].bar([i + 0.2 for i in x], ours, 0.4, label="/v1/rag")
    axes[0].set_xticks(x, labels, fontsize=8)
    axes[0].set_ylabel("p50 ms")
    axes[0].set_title("RAG vs the plain search-then-chat pipeline")
    axes[0].legend()
    plot_agent(axes[1:], agent)
    fig.suptitle(f"serve_app RAG + agent, {model}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ------------------------------------------------------------------------------------------------ report


# Scenarios that start servers on this machine (a baseline, or a process to profile).
LOCAL_ONLY = {"chat", "cpu", "retrieval", "overhead"}

SCENARIOS: dict[str, Callable[[Context], dict]] = {
    "chat": chat, "cpu": cpu, "retrieval": retrieval, "rag_agent": rag_agent, "overhead": overhead, "autoscaling": autoscaling,
    "rollout": rollout,
}


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
