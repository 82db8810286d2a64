"""Cache-aware routing vs Serve's power of two choices, side by side in one run of the app.

One app serves the default model four times (each its own LLM deployment, every engine bound to one core, with a
small KV cache set by ``--kv-cache-memory-bytes``):

    route-p2c      2 replicas, routing.policy power_of_two (Serve's default)
    route-prefix   2 replicas, routing.policy prefix (the default: prefix affinity + sessions)
    route-ref      1 replica with the KV cache of both (the whole load's cache on one replica: the reference
                   hit rate), routing prefix
    route-one-p2c  1 replica, power_of_two (with route-ref: the router's own cost where it has nothing to choose)

Loads, each on each model in turn (nothing else runs meanwhile):

- **multi-round QA** (production-stack's benchmarks/multi-round-qa, scaled down): ``--users`` users, each with the
  shared system prompt and a long document of its own, ask ``--rounds`` questions one after another, the history
  growing with every short answer (``--answer-tokens``, fixed length): prefill-heavy, as that load is. Paced as
  production-stack paces it: ``--qps`` requests a second overall, each user asking every ``users / qps`` seconds
  or when its previous answer is in, whichever is later (``--qps 0``: a closed loop, at most ``--concurrency``
  requests in flight). Every user sends its id as ``x-session-id`` (power of two ignores it), and
  once more on the prefix router without it (prefix affinity alone). The load's distinct prefixes are reported
  against one replica's KV cache (goal: at least 2x, so one replica cannot hold them all).
- **agent-shaped runs**: ``--runs`` transcripts of ``--steps`` calls each (a shared system prompt listing the
  tools, then the task, each step's tool call and observation appended), one session per run: what the agent
  deployment sends (serve_app/agent/loop.py passes the run's session to every call).
- **nothing to share** (the router's cost): distinct random prompts on the one-replica models, alternated.

Figures: client TTFT p50/p90 (streamed), the prefix-cache hit rate from vLLM's own counters
(``vllm:prefix_cache_hits`` / ``queries``, per model and replica, read from the app's /metrics before and after
each load), how the requests spread over the replicas, and the share of each session's calls on its replica.

    python -m benchmarks.routing [--users 16 --rounds 4 --doc-words 260 --qps 1.5 --runs 8 --steps 4]

Writes benchmarks/results/routing.json (``--name``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks._sse import sse_events

ROOT = Path(__file__).resolve().parent.parent
P2C, PREFIX, REF, ONE = "route-p2c", "route-prefix", "route-ref", "route-one-p2c"
NO_SESSION = "route-prefix (no x-session-id)"
# (what the report calls it, the model, whether users send x-session-id)
PHASES = ((P2C, P2C, True), (PREFIX, PREFIX, True), (NO_SESSION, PREFIX, False), (REF, REF, True))
WORDS = ("account billing invoice refund policy support customer order delivery address payment card plan "
         "upgrade downgrade contract renewal discount warranty return exchange product service issue ticket "
         "priority escalation manager agent response time region store online mobile app password login "
         "security privacy data export report monthly annual fee charge credit balance statement").split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def kv_bytes_per_token(model_dir: str | Path) -> int:
    """What one token takes in the KV cache (keys and values of every layer, 16-bit)."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c.get("num_key_value_heads", c["num_attention_heads"]) * head_dim * 2


def bench_config(base: str, kv_tokens: int, per_token: int) -> dict[str, Any]:
    config = yaml.safe_load(Path(base).read_text())
    app = config["applications"][0]
    args = app["args"]
    engine = {**args["engine"], "kv_cache_space_gib": None, "cpu_cores": 1, "max_num_seqs": 16,
              "extra_args": ["--kv-cache-memory-bytes", str(kv_tokens * per_token)]}
    ref_engine = {**engine, "extra_args": ["--kv-cache-memory-bytes", str(2 * kv_tokens * per_token)]}

    def served(name: str, policy: str, eng: dict) -> dict[str, Any]:
        return {"model": {"source": args["model"]["source"], "served_name": name}, "engine": copy.deepcopy(eng),
                "routing": {"policy": policy}}

    first = served(P2C, "power_of_two", engine)
    args.update(first)
    args["models"] = [served(PREFIX, "prefix", engine), served(REF, "prefix", ref_engine),
                      served(ONE, "power_of_two", engine)]
    args["vector"] = {**args.get("vector", {}), "enabled": False}
    args["agent"] = {"enabled": False}
    args.pop("rag", None)
    replicas = {P2C: 2, PREFIX: 2, REF: 1, ONE: 1}
    app["deployments"] = [d for d in app.get("deployments") or [] if d["name"] == "Ingress"] + [
        {"name": f"LLMServer-{m}", "num_replicas": n, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0},
         "graceful_shutdown_timeout_s": 10} for m, n in replicas.items()]
    return config


def prefix_counters(url: str) -> dict[tuple[str, str], dict[str, float]]:
    """(model, replica) -> vLLM's prefix-cache queries and hits (tokens) as the app's /metrics has them."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {"queries": 0.0, "hits": 0.0})
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for s in family.samples:
            kind = {"ray_vllm_prefix_cache_queries_total": "queries", "ray_vllm_prefix_cache_hits_total": "hits"}.get(s.name)
            if kind:
                out[(s.labels.get("model_name", ""), s.labels.get("ReplicaId", ""))][kind] += s.value
    return dict(out)


def _queries(counters: dict, model: str) -> float:
    return sum(v["queries"] for k, v in counters.items() if k[0] == model)


def settled_counters(url: str, model: str, expect_queries: float, timeout_s: float = 90) -> dict:
    """The counters once Ray's metrics export has caught up (unchanged over two reads, past the expected count)."""
    last, t0 = None, time.monotonic()
    while True:
        now = {k: v for k, v in prefix_counters(url).items() if k[0] == model}
        total = sum(v["queries"] for v in now.values())
        if now == last and total >= expect_queries or time.monotonic() - t0 > timeout_s:
            return now
        last = now
        time.sleep(5)


async def chat(c: httpx.AsyncClient, model: str, messages: list[dict], tokens: int, session: str | None) -> dict:
    """One streamed chat request: TTFT, replica, its answer, prompt tokens."""
    body = {"model": model, "messages": messages, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, text, usage = None, [], {}
    async with c.stream("POST", "/v1/chat/completions", json=body,
                        headers={"x-session-id": session} if session else {}) as r:
        r.raise_for_status()
        replica = r.headers.get("x-served-by")
        async for event in sse_events(r):
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(delta)
    return {"ttft_s": ttft if ttft is not None else time.perf_counter() - t0, "replica": replica,
            "answer": "".join(text), "prompt_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0), "end": time.perf_counter()}


async def multi_round_qa(url: str, model: str, ns, seed: int, sessions: bool = True) -> dict[str, Any]:
    rng = random.Random(seed)
    system = "You are the support assistant. Policy: " + _text(rng, ns.system_words)
    docs = [f"Customer {u} file: " + _text(rng, ns.doc_words) for u in range(ns.users)]
    gate = asyncio.Semaphore(ns.concurrency)
    records: list[dict] = []
    finals: dict[int, int] = {}

    # With --qps (production-stack's pacing): user u starts at u / qps and asks users / qps seconds after its
    # previous question, or as soon as the answer is in when that comes later ("late": the load fell behind its
    # pace). Without: at most --concurrency in flight.
    gap = ns.users / ns.qps if ns.qps else 0.0

    async def user(c: httpx.AsyncClient, u: int) -> None:
        send_at = t0 + (u / ns.qps if ns.qps else u * ns.stagger_s)
        messages = [{"role": "system", "content": system}]
        urng = random.Random(seed * 1000 + u)
        for r in range(ns.rounds):
            question = f"Question {r}: " + _text(urng, ns.question_words)
            messages.append({"role": "user", "content": (docs[u] + "\n" if r == 0 else "") + question})
            late = bool(ns.qps) and r > 0 and time.perf_counter() > send_at
            await asyncio.sleep(max(0.0, send_at - time.perf_counter()))
            send_at = time.perf_counter() + gap
            async with gate if not ns.qps else contextlib.nullcontext():
                rec = await chat(c, model, messages, ns.answer_tokens, f"user-{seed}-{u}" if sessions else None)
            records.append({**rec, "session": u, "round": r, "late": late})
            messages.append({"role": "assistant", "content": rec["answer"]})
            finals[u] = rec["prompt_tokens"] + rec["output_tokens"]

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        await asyncio.gather(*(user(c, u) for u in range(ns.users)))
    return {"records": records, "duration_s": time.perf_counter() - t0, "final_tokens": finals}


async def agent_runs(url: str, model: str, ns, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    tools = "\n".join(f"- {name}: {_text(rng, 30)}" for name in ("search_documents", "get_document", "calculator",
                                                                 "final_answer"))
    system = f"You are an agent. Answer with one JSON tool call per step. Tools:\n{tools}"
    gate = asyncio.Semaphore(ns.concurrency)
    records: list[dict] = []

    async def run(c: httpx.AsyncClient, i: int) -> None:
        rrng = random.Random(seed * 1000 + i)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "Task: " + _text(rrng, 40)}]
        for step in range(ns.steps):
            async with gate:
                rec = await chat(c, model, messages, ns.answer_tokens, f"agent-{seed}-{i}")
            records.append({**rec, "session": i, "round": step})
            messages += [{"role": "assistant", "content": rec["answer"]},
                         {"role": "user", "content": "Observation: " + _text(rrng, 60)}]

    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        await asyncio.gather(*(run(c, i) for i in range(ns.runs)))
    return {"records": records}


async def nothing_shared(url: str, model: str, n: int, concurrency: int, seed: int, tokens: int) -> dict[str, Any]:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(concurrency)
    records: list[dict] = []

    async def one(c: httpx.AsyncClient, i: int) -> None:
        async with gate:
            records.append(await chat(c, model, [{"role": "user", "content": f"{i} " + _text(rng, 200)}], tokens, None))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        await asyncio.gather(*(one(c, i) for i in range(n)))
    duration = time.perf_counter() - t0
    return {"output_tok_s": sum(r["output_tokens"] for r in records) / duration, "duration_s": duration}


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def summary(records: list[dict], before: dict, after: dict) -> dict[str, Any]:
    ttfts = [r["ttft_s"] * 1000 for r in records]
    by_replica = Counter(r["replica"] for r in records)
    sessions: dict[Any, Counter] = defaultdict(Counter)
    for r in records:
        sessions[r["session"]][r["replica"]] += 1
    on_one = sum(c.most_common(1)[0][1] for c in sessions.values()) / len(records)
    per_replica = {}
    for key, v in after.items():
        b = before.get(key, {"queries": 0.0, "hits": 0.0})
        q, h = v["queries"] - b["queries"], v["hits"] - b["hits"]
        if q > 0:
            per_replica[key[1]] = {"queries": q, "hits": h, "hit_rate": round(h / q, 4)}
    queries = sum(x["queries"] for x in per_replica.values())
    hits = sum(x["hits"] for x in per_replica.values())
    return {"requests": len(records), "ttft_p50_ms": round(statistics.median(ttfts), 1),
            "ttft_p90_ms": round(_pct(ttfts, 90), 1),
            "hit_rate": round(hits / queries, 4) if queries else None, "prefix_cache": per_replica,
            "requests_by_replica": dict(by_replica), "session_calls_on_one_replica": round(on_one, 4)}


async def warm(url: str, model: str, replicas: int) -> None:
    """Until every replica of ``model`` has answered (sessions spread over the prefix router's replicas; power of
    two spreads by itself)."""
    seen: set[str] = set()
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        for i in range(200):
            seen.add((await chat(c, model, [{"role": "user", "content": f"hi {i}"}], 1, f"warm-{i}"))["replica"])
            if len(seen) >= replicas:
                return
    raise RuntimeError(f"{model}: only {len(seen)} of {replicas} replicas answered")


def main() -> None:
    from benchmarks._servers import serve_app
    from serve_app.config import load_serve_config
    from serve_app.llm.model import resolve_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dev-cpu.yaml")
    p.add_argument("--kv-tokens", type=int, default=4096, help="one replica's KV cache, in tokens")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--qps", type=float, default=1.5,
                   help="the QA load's overall request rate (production-stack's pacing); 0: closed loop of "
                   "--concurrency")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--system-words", type=int, default=150)
    p.add_argument("--doc-words", type=int, default=260)
    p.add_argument("--question-words", type=int, default=15)
    p.add_argument("--answer-tokens", type=int, default=16)
    p.add_argument("--stagger-s", type=float, default=0.25)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cost-requests", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="routing.json", help="the report's file name in --out")
    ns = p.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)

    _, apps = load_serve_config(ns.config)
    settings = next(iter(apps.values()))
    per_token = kv_bytes_per_token(resolve_model(settings.model.source, settings.model.cache_dir))
    config = bench_config(ns.config, ns.kv_tokens, per_token)
    report: dict[str, Any] = {"kv_tokens_per_replica": ns.kv_tokens, "kv_bytes_per_token": per_token,
                              "load": {k: v for k, v in vars(ns).items() if k not in ("out", "config")}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "routing.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with serve_app(str(path), out / "routing-app.log") as (url, ready_s):
            report["app_ready_s"] = round(ready_s, 1)
            for model, n in ((P2C, 2), (PREFIX, 2), (REF, 1), (ONE, 1)):
                asyncio.run(warm(url, model, n))
            qa: dict[str, Any] = {}
            # The same load's shape on each, its words drawn anew (no phase finds another's prompts cached).
            for seed, (name, model, sessions) in enumerate(PHASES):
                before = prefix_counters(url)
                run = asyncio.run(multi_round_qa(url, model, ns, seed=7 + seed, sessions=sessions))
                after = settled_counters(url, model, _queries(before, model) + 1)
                qa[name] = {**summary(run["records"], before, after), "duration_s": round(run["duration_s"], 1)}
                qa[name]["distinct_prompt_tokens"] = sum(run["final_tokens"].values())
                qa[name]["late_sends"] = sum(r["late"] for r in run["records"])
                print(name, json.dumps({k: v for k, v in qa[name].items() if k != "prefix_cache"}), flush=True)
            agents: dict[str, Any] = {}
            for model in (P2C, PREFIX):
                before = prefix_counters(url)
                run = asyncio.run(agent_runs(url, model, ns, seed=11))
                after = settled_counters(url, model, _queries(before, model) + 1)
                agents[model] = summary(run["records"], before, after)
                print(model, "agent", json.dumps({k: v for k, v in agents[model].items() if k != "prefix_cache"}),
                      flush=True)
            cost: dict[str, list[float]] = {ONE: [], REF: []}
            for i in range(2):
                for model in ((ONE, REF) if i % 2 == 0 else (REF, ONE)):
                    r = asyncio.run(nothing_shared(url, model, ns.cost_requests, 4, seed=100 + i, tokens=32))
                    cost[model].append(r["output_tok_s"])
    report["multi_round_qa"] = qa
    report["agent_runs"] = agents
    report["router_cost_one_replica"] = {
        "output_tok_s": {m: [round(x, 1) for x in v] for m, v in cost.items()},
        "ratio_prefix_vs_power_of_two": round(statistics.mean(cost[REF]) / statistics.mean(cost[ONE]), 3)}
    load_tokens = qa[P2C]["distinct_prompt_tokens"]
    report["ratios"] = {
        "load_tokens_vs_one_replica_kv": round(load_tokens / ns.kv_tokens, 2),
        "hit_rate_prefix_vs_single_replica_whole_cache": (
            round(qa[PREFIX]["hit_rate"] / qa[REF]["hit_rate"], 3) if qa[REF]["hit_rate"] else None),
        "hit_rate_power_of_two_vs_single_replica_whole_cache": (
            round(qa[P2C]["hit_rate"] / qa[REF]["hit_rate"], 3) if qa[REF]["hit_rate"] else None),
        "ttft_p50_prefix_vs_power_of_two": round(qa[PREFIX]["ttft_p50_ms"] / qa[P2C]["ttft_p50_ms"], 3),
        "hit_rate_prefix_without_sessions_vs_single_replica_whole_cache": (
            round(qa[NO_SESSION]["hit_rate"] / qa[REF]["hit_rate"], 3) if qa[REF]["hit_rate"] else None),
        "ttft_p50_prefix_without_sessions_vs_power_of_two": round(qa[NO_SESSION]["ttft_p50_ms"] / qa[P2C]["ttft_p50_ms"], 3),
        "agent_calls_on_one_replica_prefix": agents[PREFIX]["session_calls_on_one_replica"],
        "agent_calls_on_one_replica_power_of_two": agents[P2C]["session_calls_on_one_replica"],
    }
    report["goals"] = {"hit_rate_ratio_min": 0.9, "ttft_p50_ratio_max": 0.8, "agent_calls_on_one_replica_min": 0.95}
    (out / ns.name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
