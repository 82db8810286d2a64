"""RAG against what a user writes instead, side by side in one run, on the same app.

1. ``POST /v1/rag`` (streamed) against the plain pipeline a user writes with the app's other routes:
   ``POST /v1/search``, then a streamed ``/v1/chat/completions`` with the sources in the prompt. Two such
   pipelines: ``plain`` pastes every hit whole (the app's system prompt, hits in score order), and
   ``plain_budgeted`` is the careful one, whose prompt is the very prompt /v1/rag sends: hits merged per
   document and cut to ``rag.max_context_chars``, in the app's source format (built with the app's own
   ``RagPipeline.sources_of`` and ``messages``, from the config's settings). Ten questions over five ingested
   documents (benchmarks/data/rag_corpus.json), the arms alternated request by request (which one goes first
   flips every round), so all see the same drift of a shared machine. Every answer is ``--max-tokens`` long
   (``ignore_eos``; /v1/rag's benchmark options), so end to end compares equal work. Client clock: time to the
   first answer token and end to end; the engine's prompt and answer tokens of each arm (``usage``).
2. Search speed: ``POST /v1/search`` through the app against the same search in-process (the app's embedder
   and Qdrant Edge store in this process, the same chunks), one query at a time.

    python -m benchmarks.rag [--rounds 4] [--max-tokens 128] [--concurrency 1] [--url URL]

Without ``--url`` the app is started the way `make serve` starts it, on a temporary data directory. Writes
benchmarks/results/rag.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks._servers import ROOT, serve_app
from benchmarks._sse import sse_events

RESULTS = ROOT / "benchmarks" / "results"
CORPUS = ROOT / "benchmarks" / "data" / "rag_corpus.json"


def pct(xs: list[float], p: float) -> float | None:
    return float(np.percentile(np.asarray(xs), p)) if xs else None


def load_corpus() -> dict:
    return json.loads(CORPUS.read_text())


def default_prompts() -> dict:
    from serve_app.config.prompts import PromptSettings

    return PromptSettings().model_dump()


def app_pipeline(config: str):
    """A RagPipeline over the rag and prompt settings of ``config``'s app, for its prompt methods only."""
    from serve_app.config import load_serve_config
    from serve_app.rag.pipeline import RagPipeline

    _, apps = load_serve_config(str(ROOT / config) if not Path(config).is_absolute() else config)
    settings = next(iter(apps.values()))
    return RagPipeline(None, None, settings.rag, settings.prompts)  # type: ignore[arg-type]  # prompt methods only


# ------------------------------------------------------------------------------------- the two pipelines


async def rag_once(c: httpx.AsyncClient, question: str, top_k: int, max_tokens: int, mode: str | None) -> dict:
    body = {"question": question, "stream": True, "max_tokens": max_tokens, "top_k": top_k, "ignore_eos": True}
    if mode:
        body["mode"] = mode
    t0 = time.perf_counter()
    ttft, tokens, done = None, 0, None
    async with c.stream("POST", "/v1/rag", json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "status": r.status_code, "body": (await r.aread()).decode()[:300]}
        async for event in sse_events(r):
            if event.get("type") == "token" and event.get("text"):
                tokens += 1
                ttft = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
            elif event.get("type") == "done":
                done = event
            elif "error" in event:
                return {"ok": False, "error": event["error"]}
    usage = (done or {}).get("usage") or {}
    return {"ok": True, "e2e_ms": (time.perf_counter() - t0) * 1000, "ttft_ms": ttft, "tokens": tokens,
            "degraded": bool(done and done.get("degraded")), "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "server_ttft_ms": ((done or {}).get("timings") or {}).get("ttft_ms")}


def whole_hits_prompt(question: str, hits: list[dict], prompts: dict) -> list[dict[str, str]]:
    """The quick pipeline's prompt: every hit pasted whole, in score order."""
    sources = "\n".join(f"[{i}] {h['text']}" for i, h in enumerate(hits, 1))
    return [{"role": "system", "content": prompts["rag_answer_system"]},
            {"role": "user", "content": f"Sources:\n{sources}\n\nQuestion: {question}\nAnswer (cite sources "
                                        "like [1]):"}]


def budgeted_prompt(pipeline) -> Callable[[str, list[dict], dict], list[dict[str, str]]]:
    """The careful pipeline's prompt: the app's own source merging, budget and format (``pipeline`` is a
    RagPipeline over the config's rag and prompt settings; only its pure prompt methods are used)."""
    from serve_app.protocol.retrieval import SearchHit

    def prompt(question: str, hits: list[dict], _prompts: dict) -> list[dict[str, str]]:
        return pipeline.messages(question, pipeline.sources_of([SearchHit.model_validate(h) for h in hits]))

    return prompt


async def plain_once(c: httpx.AsyncClient, question: str, top_k: int, max_tokens: int, prompts: dict,
                     model: str, build=whole_hits_prompt) -> dict:
    """What a user writes: search, put the hits in the prompt (``build``), stream the chat answer."""
    t0 = time.perf_counter()
    r = await c.post("/v1/search", json={"query": question, "top_k": top_k})
    if r.status_code != 200:
        return {"ok": False, "status": r.status_code}
    messages = build(question, r.json()["results"], prompts)
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    ttft, tokens = None, 0
    usage: dict[str, Any] = {}
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "status": r.status_code}
        async for event in sse_events(r):
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    tokens += 1
                    ttft = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
    return {"ok": True, "e2e_ms": (time.perf_counter() - t0) * 1000, "ttft_ms": ttft, "tokens": tokens,
            "degraded": False, "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"), "server_ttft_ms": None}


def _mean(xs: list[Any]) -> float | None:
    values = [x for x in xs if x is not None]
    return float(np.mean(values)) if values else None


def summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["ok"]]
    return {
        "requests": len(rows),
        "failed": len(rows) - len(ok),
        "failures": [r for r in rows if not r["ok"]][:3],
        "degraded": sum(r["degraded"] for r in ok),
        "ttft_p50_ms": pct([r["ttft_ms"] for r in ok if r["ttft_ms"] is not None], 50),
        "ttft_p90_ms": pct([r["ttft_ms"] for r in ok if r["ttft_ms"] is not None], 90),
        "e2e_p50_ms": pct([r["e2e_ms"] for r in ok], 50),
        "e2e_p90_ms": pct([r["e2e_ms"] for r in ok], 90),
        "tokens_mean": float(np.mean([r["tokens"] for r in ok])) if ok else None,
        "prompt_tokens_mean": _mean([r.get("prompt_tokens") for r in ok]),
        "completion_tokens_mean": _mean([r.get("completion_tokens") for r in ok]),
        "server_ttft_p50_ms": pct([r["server_ttft_ms"] for r in ok if r.get("server_ttft_ms") is not None], 50),
        # Answers differ in length between the arms (different prompts): the time per token after the first
        # compares the decode itself.
        "decode_ms_per_token_p50": pct([(r["e2e_ms"] - r["ttft_ms"]) / (r["tokens"] - 1) for r in ok
                                        if r["ttft_ms"] is not None and r["tokens"] > 1], 50),
    }


async def side_by_side(url: str, questions: list[str], rounds: int, top_k: int, max_tokens: int,
                       concurrency: int, modes: list[str | None], config: str = "configs/dev-cpu.yaml") -> dict:
    prompts = default_prompts()
    careful = budgeted_prompt(app_pipeline(config))
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        model = (await c.get("/v1/models")).json()["data"][0]["id"]
        arms: dict[str, Callable[[str], Awaitable[dict]]] = {
            "plain": lambda q: plain_once(c, q, top_k, max_tokens, prompts, model),
            "plain_budgeted": lambda q: plain_once(c, q, top_k, max_tokens, prompts, model, careful)}
        for mode in modes:
            arms[f"rag_{mode or 'default'}"] = functools.partial(rag_once, c, top_k=top_k, max_tokens=max_tokens,
                                                                 mode=mode)
        for q in questions:  # warm-up: every arm once per question (engine, caches, code paths)
            for arm in arms.values():
                await arm(q)
        names = list(arms)
        jobs: list[tuple[str, str]] = []
        for k in range(rounds):
            for i, q in enumerate(questions):
                order = names if (k + i) % 2 == 0 else names[::-1]  # who goes first flips
                jobs.extend((name, q) for name in order)
        rows: dict[str, list[dict]] = {n: [] for n in names}
        sem = asyncio.Semaphore(concurrency)

        async def run(name: str, q: str) -> None:
            async with sem:
                rows[name].append(await arms[name](q))

        if concurrency == 1:
            for name, q in jobs:
                await run(name, q)
        else:
            await asyncio.gather(*(run(n, q) for n, q in jobs))
    out = {n: summary(r) for n, r in rows.items()}
    for n in names[2:]:  # the RAG arms, over each pipeline
        for base in ("plain", "plain_budgeted"):
            out[n][f"ttft_p50_over_{base}"] = out[n]["ttft_p50_ms"] / out[base]["ttft_p50_ms"]
            out[n][f"e2e_p50_over_{base}"] = out[n]["e2e_p50_ms"] / out[base]["e2e_p50_ms"]
    return {"model": model, "concurrency": concurrency, "rounds": rounds, "questions": len(questions),
            "top_k": top_k, "max_tokens": max_tokens, "arms": out}


# ------------------------------------------------------------------------------------------- search speed


def search_speed(url: str, corpus: dict, queries: list[str], repeats: int, top_k: int) -> dict:
    """/v1/search through the app against the same search in this process: the same embedder and store, the
    app's default search mode (``vector.search_mode``: hybrid, dense and BM25 fused over the same number of
    candidates), one torch thread for the query as the VectorStore replica has."""
    import torch
    import yaml
    from transformers import AutoTokenizer

    from serve_app.config.settings import VectorSettings
    from serve_app.vector.chunker import chunk_text
    from serve_app.vector.edge_store import QdrantEdgeStore
    from serve_app.vector.embedder import Embedder, resolve_embedder
    from serve_app.vector.keywords import KeywordEncoder
    from serve_app.vector.store import StoredChunk

    args = yaml.safe_load((ROOT / "configs/dev-cpu.yaml").read_text())["applications"][0]["args"]
    v = args["vector"]
    settings = VectorSettings.model_validate(v)
    mode, candidates = settings.search_mode, max(top_k, settings.hybrid_candidates)
    torch.set_num_threads(1)
    embedder = Embedder("default")
    tokenizer = AutoTokenizer.from_pretrained(resolve_embedder("default"))
    keywords = KeywordEncoder()
    with tempfile.TemporaryDirectory() as tmp:
        store = QdrantEdgeStore(Path(tmp) / "documents", embedder.dim, hnsw_ef=settings.hnsw_ef, keywords=keywords)
        try:
            for d in corpus["documents"]:
                chunks = chunk_text(d["id"], d["text"], tokenizer, v["chunk_tokens"], v["chunk_overlap"])
                stored = [StoredChunk(c.id, c.document_id, c.position, c.text) for c in chunks]
                texts = [c.text for c in chunks]
                store.replace_document(d["id"], stored, embedder.encode(texts), {}, keywords.documents(texts))
            local, app = [], []
            with httpx.Client(base_url=url, timeout=60) as c:
                def search(q: str) -> None:  # what the VectorStore deployment does for a query
                    vec = embedder.encode([q])[0] if mode != "keyword" else None
                    sparse = keywords.query(q) if mode != "dense" else None
                    store.search(vec, top_k, None, None, mode=mode, sparse=sparse, candidates=candidates)

                for q in queries:  # warm-up of both
                    search(q)
                    c.post("/v1/search", json={"query": q, "top_k": top_k}).raise_for_status()
                for _ in range(repeats):
                    for q in queries:
                        t0 = time.perf_counter()
                        search(q)
                        local.append((time.perf_counter() - t0) * 1000)
                        t0 = time.perf_counter()
                        c.post("/v1/search", json={"query": q, "top_k": top_k}).raise_for_status()
                        app.append((time.perf_counter() - t0) * 1000)
        finally:
            store.close()
    app_p50, local_p50 = pct(app, 50), pct(local, 50)
    return {"queries": len(local), "mode": mode, "inprocess_p50_ms": local_p50, "inprocess_p90_ms": pct(local, 90),
            "app_p50_ms": app_p50, "app_p90_ms": pct(app, 90),
            "app_p50_over_inprocess": app_p50 / local_p50 if app_p50 is not None and local_p50 else None}


# ---------------------------------------------------------------------------------------------------- main


def run(url: str, args) -> dict:
    corpus = load_corpus()
    with httpx.Client(base_url=url, timeout=600) as c:
        c.post("/v1/documents", json={"documents": corpus["documents"]}).raise_for_status()
    result: dict[str, Any] = {"command": "python -m benchmarks.rag " + " ".join(args.argv), "rag": []}
    for conc in [] if args.skip_rag else args.concurrency:
        r = asyncio.run(side_by_side(url, corpus["questions"], args.rounds, args.top_k, args.max_tokens, conc,
                                     args.modes, args.config))
        print(json.dumps(r, indent=1))
        result["rag"].append(r)
    if not args.skip_search:
        result["search"] = search_speed(url, corpus, corpus["questions"], args.search_repeats, args.top_k)
        print(json.dumps(result["search"], indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/dev-cpu.yaml")
    ap.add_argument("--url", help="an app already running (its store gets the corpus ingested)")
    ap.add_argument("--rounds", type=int, default=4, help="each question this many times per arm")
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1])
    ap.add_argument("--modes", nargs="+", default=["default"],
                    help="RAG arms by search mode ('default': the request names none)")
    ap.add_argument("--search-repeats", type=int, default=10)
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-rag", action="store_true", help="only the search speed")
    ap.add_argument("--out", default=str(RESULTS / "rag.json"))
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    args.modes = [None if m == "default" else m for m in args.modes]
    with tempfile.TemporaryDirectory() as data:
        started = nullcontext((args.url, None)) if args.url else serve_app(
            args.config, Path(data) / "app.log", env={"SERVE_APP_DATA_DIR": data})
        with started as (url, ready_s):
            result = run(url, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
