"""Retrieval tier benchmark, each figure beside its baseline in the same run.

1. Through the app vs in-process (a retrieval-only app started the way `make serve` starts it):
   - embedding throughput: concurrent clients on POST /v1/embeddings ÷ in-process ``encode`` of the same
     texts with the same thread count;
   - ingest throughput (chunks/s): POST /v1/documents ÷ chunk + embed + store in-process.
2. Embedded vector stores, in-process, at 10 k / 100 k / 1 M chunks: Qdrant Edge (HNSW) and
   qdrant-client's local mode (exact, pure Python): upsert rate, index build time, search p50/p99, and
   recall@10 against exact search.

Vectors are real all-MiniLM-L6-v2 embeddings of generated sentences (words from the embedder's own
vocabulary) for the first 10 k; the larger collections add vectors mixed from pairs of those real ones plus
noise (embedding 1 M texts would take about half an hour here), so neighbourhoods keep the shape of real
embeddings rather than of random Gaussian points.

    python -m benchmarks.retrieval [--sizes 10000 100000 1000000] [--backends edge local]

Writes benchmarks/results/retrieval.json and retrieval.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from benchmarks._servers import ROOT, serve_app
from serve_app.config.names import is_llm_deployment

N_REAL = 10_000


def _words():
    from transformers import AutoTokenizer

    from serve_app.vector.embedder import resolve_embedder

    tok = AutoTokenizer.from_pretrained(resolve_embedder("default"))
    return sorted(w for w in tok.vocab if w.isalpha() and w.islower() and len(w) >= 4)


def sentences(n: int, seed: int, lo: int = 8, hi: int = 24) -> list[str]:
    rng = np.random.default_rng(seed)
    words = _words()
    return [" ".join(rng.choice(words, size=rng.integers(lo, hi))) for _ in range(n)]


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


# --------------------------------------------------------------------------------------- through the app


def retrieval_only_config(tmp: Path) -> Path:
    config = yaml.safe_load((ROOT / "configs/dev-cpu.yaml").read_text())
    app = config["applications"][0]
    app["args"]["model"]["enabled"] = False
    app["args"]["vector"]["path"] = str(tmp / "app-store")
    app["deployments"] = [d for d in app["deployments"] if not is_llm_deployment(d["name"]) and d["name"] != "Agent"]
    path = tmp / "retrieval.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def bench_app(tmp: Path, out: Path, n_texts: int, clients: int, per_request: int, n_docs: int,
              n_queries: int = 200) -> dict:
    import httpx

    from serve_app.config.settings import VectorSettings
    from serve_app.vector.chunker import chunk_text
    from serve_app.vector.deployment import make_store
    from serve_app.vector.embedder import Embedder
    from serve_app.vector.store import StoredChunk

    texts = sentences(n_texts, seed=1)
    docs = [{"id": f"doc{i}", "text": " ".join(sentences(40, seed=1000 + i))} for i in range(n_docs)]
    res: dict = {}

    # In-process baselines first, with the thread count the app's Embedder uses (embed_threads: 2).
    import torch

    torch.set_num_threads(2)
    emb = Embedder()
    emb.encode(texts[:256])
    t0 = time.perf_counter()
    emb.encode(texts)
    res["embed_inprocess_texts_per_s"] = n_texts / (time.perf_counter() - t0)

    vs = VectorSettings(path=tmp / "inproc-store")
    store = make_store(vs, emb.dim)
    t0 = time.perf_counter()
    n_chunks = 0
    for d in docs:
        chunks = chunk_text(d["id"], d["text"], emb.tokenizer, vs.chunk_tokens, vs.chunk_overlap)
        vecs = emb.encode([c.text for c in chunks])
        store.replace_document(d["id"], [StoredChunk(c.id, c.document_id, c.position, c.text) for c in chunks], vecs)
        n_chunks += len(chunks)
    res["ingest_inprocess_chunks_per_s"] = n_chunks / (time.perf_counter() - t0)
    queries = sentences(n_queries, seed=2)
    lat_in: list[float] = []
    for q in queries:  # a search in-process: embed the query, then the store's top-k
        t = time.perf_counter()
        store.search(emb.encode([q])[0], 5)
        lat_in.append(time.perf_counter() - t)
    res["search_inprocess_p50_ms"] = pct(lat_in, 50) * 1000
    res["search_inprocess_p99_ms"] = pct(lat_in, 99) * 1000
    store.close()
    del emb

    with serve_app(str(retrieval_only_config(tmp)), out / "retrieval-app.log") as (url, ready_s):
        res["app_ready_s"] = round(ready_s, 1)
        batches = [texts[i : i + per_request] for i in range(0, n_texts, per_request)]
        with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
            http.post("/v1/embeddings", json={"input": texts[:64], "encoding_format": "float"})  # warm-up
            lat: list[float] = []

            def one(batch):
                t = time.perf_counter()
                r = http.post("/v1/embeddings", json={"input": batch, "encoding_format": "base64"})
                r.raise_for_status()
                lat.append(time.perf_counter() - t)
                return len(r.json()["data"])

            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                done = sum(pool.map(one, batches))
            res["embed_app_texts_per_s"] = done / (time.perf_counter() - t0)
            res["embed_app_request_p50_ms"] = pct(lat, 50) * 1000
            res["embed_app_request_p99_ms"] = pct(lat, 99) * 1000

            def ingest(i):
                r = http.post("/v1/documents", json={"documents": docs[i : i + 4]})
                r.raise_for_status()
                return sum(d["chunks"] for d in r.json()["documents"])

            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                chunks = sum(pool.map(ingest, range(0, n_docs, 4)))
            res["ingest_app_chunks_per_s"] = chunks / (time.perf_counter() - t0)
            res["ingest_chunks"] = chunks
            lat_app: list[float] = []
            for q in queries:  # one client, like the in-process loop
                t = time.perf_counter()
                http.post("/v1/search", json={"query": q, "top_k": 5}).raise_for_status()
                lat_app.append(time.perf_counter() - t)
            res["search_app_p50_ms"] = pct(lat_app, 50) * 1000
            res["search_app_p99_ms"] = pct(lat_app, 99) * 1000
    res["embed_ratio"] = res["embed_app_texts_per_s"] / res["embed_inprocess_texts_per_s"]
    res["ingest_ratio"] = res["ingest_app_chunks_per_s"] / res["ingest_inprocess_chunks_per_s"]
    res["search_p50_added_ms"] = res["search_app_p50_ms"] - res["search_inprocess_p50_ms"]
    res.update(n_texts=n_texts, clients=clients, texts_per_request=per_request, documents=n_docs)
    return res


# ------------------------------------------------------------------------------------ embedded stores


def corpus_vectors(n_max: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from serve_app.vector.embedder import Embedder

    emb = Embedder()
    real = emb.encode(sentences(N_REAL, seed=seed))
    queries = emb.encode(sentences(200, seed=seed + 7))
    rng = np.random.default_rng(seed)
    parts = [real]
    made = len(real)
    while made < n_max:
        k = min(100_000, n_max - made)
        a, b = rng.integers(0, N_REAL, size=k), rng.integers(0, N_REAL, size=k)
        w = rng.uniform(0.2, 0.8, size=(k, 1)).astype(np.float32)
        mixed = w * real[a] + (1 - w) * real[b] + rng.normal(0, 0.02, size=(k, real.shape[1])).astype(np.float32)
        parts.append((mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32))
        made += k
    return np.concatenate(parts)[:n_max], queries


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    out = []
    for q in queries:
        scores = vectors @ q
        idx = np.argpartition(-scores, k)[:k]
        out.append(set(int(i) for i in idx))
    return out


def bench_store(
    kind: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    truth: list[set[int]],
    tmp: Path,
    max_query_s: float,
    local_disk_max: int,
    ef_sweep: list[int] | None = None,
) -> dict:
    from serve_app.vector.edge_store import QdrantEdgeStore
    from serve_app.vector.qdrant_client_store import QdrantClientStore
    from serve_app.vector.store import StoredChunk, VectorStore

    path = tmp / f"{kind}-{len(vectors)}"
    res: dict = {"backend": kind, "points": len(vectors)}
    edge = QdrantEdgeStore(path, vectors.shape[1]) if kind == "edge" else None  # for what only Edge has
    store: VectorStore
    if edge is not None:
        store = edge
    elif len(vectors) <= local_disk_max:
        store = QdrantClientStore("b", vectors.shape[1], path=str(path))
    else:
        # Local mode persists point by point into SQLite (~1 k points/s here): loading 1 M would take
        # ~17 min. Its search is the same exact scan either way, so larger sizes load into memory.
        store = QdrantClientStore("b", vectors.shape[1], path=":memory:")
        res["note"] = "loaded without persistence; upsert rate excludes SQLite writes"
    t0 = time.perf_counter()
    for s in range(0, len(vectors), 2000):
        # Integer point ids (Qdrant takes unsigned integers or UUIDs) map hits straight back to rows.
        chunk = [StoredChunk(i, f"d{i // 10}", i % 10, "")  # type: ignore[arg-type]  # an int id: see above
                 for i in range(s, min(s + 2000, len(vectors)))]
        store.upsert(chunk, vectors[s : s + 2000])
    res["upsert_points_per_s"] = len(vectors) / (time.perf_counter() - t0)
    if edge is not None:
        t0 = time.perf_counter()
        edge.optimize()
        res["index_build_s"] = time.perf_counter() - t0
    def run_queries() -> dict:
        lat, recalls = [], []
        t_start = time.perf_counter()
        for i, q in enumerate(queries):
            t = time.perf_counter()
            hits = store.search(q, 10)
            lat.append(time.perf_counter() - t)
            recalls.append(len({int(h.id) for h in hits} & truth[i]) / 10)
            if time.perf_counter() - t_start > max_query_s and i >= 19:
                break
        return {
            "queries": len(lat),
            "search_p50_ms": pct(lat, 50) * 1000,
            "search_p99_ms": pct(lat, 99) * 1000,
            "recall_at_10": statistics.fmean(recalls),
        }

    res.update(run_queries())
    if edge is not None and ef_sweep:
        # Same index, other search breadths: the recall / latency trade-off of vector.hnsw_ef.
        default_ef, res["ef_sweep"] = edge.hnsw_ef, {}
        for ef in ef_sweep:
            edge.hnsw_ef = ef
            res["ef_sweep"][str(ef)] = run_queries()
        edge.hnsw_ef = default_ef
    store.close()
    shutil.rmtree(path, ignore_errors=True)
    return res


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    stores = report["stores"]
    for kind, style in (("edge", "o-"), ("local", "s--")):
        rows = [r for r in stores if r["backend"] == kind]
        if not rows:
            continue
        xs = [r["points"] for r in rows]
        axes[0].plot(xs, [r["search_p99_ms"] for r in rows], style, label=f"{kind} p99")
        axes[0].plot(xs, [r["search_p50_ms"] for r in rows], style, alpha=0.5, label=f"{kind} p50")
        axes[1].plot(xs, [r["recall_at_10"] for r in rows], style, label=kind)
    axes[0].axhline(10, color="grey", lw=0.8, ls=":", label="goal p99 10 ms")
    for ax, title in ((axes[0], "search latency (ms, log)"), (axes[1], "recall@10 vs exact")):
        ax.set_xscale("log")
        ax.set_xlabel("chunks in the collection")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    app = report.get("app")
    if app:
        labels = ["embed texts/s", "ingest chunks/s"]
        ours = [app["embed_app_texts_per_s"], app["ingest_app_chunks_per_s"]]
        base = [app["embed_inprocess_texts_per_s"], app["ingest_inprocess_chunks_per_s"]]
        x = np.arange(2)
        axes[2].bar(x - 0.2, base, 0.4, label="in-process")
        axes[2].bar(x + 0.2, ours, 0.4, label="through the app (HTTP + Serve)")
        axes[2].set_xticks(x, labels)
        axes[2].set_title("throughput")
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--backends", nargs="+", default=["edge", "local"], choices=["edge", "local"])
    p.add_argument("--skip-app", action="store_true")
    p.add_argument("--skip-stores", action="store_true")
    p.add_argument("--embed-texts", type=int, default=4096)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--texts-per-request", type=int, default=16)
    p.add_argument("--documents", type=int, default=64)
    p.add_argument("--max-query-seconds", type=float, default=60.0, help="per backend and size")
    p.add_argument("--ef-sweep", type=int, nargs="*", default=[], help="also query Edge at these hnsw_ef values")
    p.add_argument("--local-disk-max", type=int, default=100_000, help="largest local-mode collection loaded on disk")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ns = p.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stores": []}
    with tempfile.TemporaryDirectory(prefix="serve-app-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if not ns.skip_app:
            report["app"] = bench_app(tmp, out, ns.embed_texts, ns.clients, ns.texts_per_request, ns.documents)
            print(json.dumps(report["app"], indent=1), flush=True)
        if not ns.skip_stores:
            vectors, queries = corpus_vectors(max(ns.sizes))
            for n in sorted(ns.sizes):
                truth = exact_topk(vectors[:n], queries, 10)
                for kind in ns.backends:
                    r = bench_store(kind, vectors[:n], queries, truth, tmp, ns.max_query_seconds, ns.local_disk_max,
                                    ns.ef_sweep)
                    print(json.dumps(r), flush=True)
                    report["stores"].append(r)
                    (out / "retrieval.json").write_text(json.dumps(report, indent=2))
    (out / "retrieval.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "retrieval.png")


if __name__ == "__main__":
    main()
