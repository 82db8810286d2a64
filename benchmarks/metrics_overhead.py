"""Does scraping /metrics under load slow requests? Side by side in one run, on one app.

Starts the app the way `make serve` does and runs the chat load of benchmarks/chat.py (`vllm bench serve`,
random 256 in / 64 out, 8 clients) in interleaved rounds: without scraping, then with a scraper that fetches
GET /metrics once a second (15x Prometheus's default interval), repeated. Reports each side's median over its
rounds and the ratios scraped / not scraped.

    python -m benchmarks.metrics_overhead [--rounds 2] [--concurrency 8] [--prompts 64]

Writes benchmarks/results/metrics_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import httpx

from benchmarks._servers import ROOT, engine_setup, serve_app
from benchmarks.chat import run_load

RESULTS = ROOT / "benchmarks" / "results"


class Scraper:
    def __init__(self, url: str, interval_s: float):
        self.url, self.interval_s = url, interval_s
        self.stop = threading.Event()
        self.scrapes: list[dict] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                r = c.get(f"{self.url}/metrics")
                self.scrapes.append({"status": r.status_code, "ms": (time.perf_counter() - t) * 1000,
                                     "bytes": len(r.content)})
                self.stop.wait(max(0.0, self.interval_s - (time.perf_counter() - t)))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dev-cpu.yaml")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args()

    settings, model_dir, _ = engine_setup(ns.config)
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"plain": [], "scraped": []}
    scrapes: list[dict] = []
    with serve_app(ns.config, RESULTS / "metrics_overhead-app.log") as (url, ready_s):
        print(f"app ready in {ready_s:.1f}s at {url}", flush=True)
        run_load(url, settings.model.name, model_dir, ns.concurrency, 16, ns)  # warm-up, not reported
        for i in range(ns.rounds):
            runs["plain"].append(run_load(url, settings.model.name, model_dir, ns.concurrency, ns.prompts, ns))
            with Scraper(url, ns.interval) as s:
                runs["scraped"].append(run_load(url, settings.model.name, model_dir, ns.concurrency, ns.prompts, ns))
            scrapes += s.scrapes
            print(f"round {i + 1}: plain {runs['plain'][-1]['output_throughput']:.1f} tok/s, scraped "
                  f"{runs['scraped'][-1]['output_throughput']:.1f} tok/s ({len(s.scrapes)} scrapes)", flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    keys = ["output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_e2el_ms"]
    summary = {side: {k: round(med(side, k), 2) for k in keys} for side in runs}
    ratios = {k: round(summary["scraped"][k] / summary["plain"][k], 3) for k in keys}
    result = {
        "command": "python -m benchmarks.metrics_overhead",
        "concurrency": ns.concurrency, "prompts_per_round": ns.prompts, "rounds": ns.rounds,
        "scrape_interval_s": ns.interval,
        "scrapes": {"count": len(scrapes), "failed": sum(1 for s in scrapes if s["status"] != 200),
                    "median_ms": round(statistics.median(s["ms"] for s in scrapes), 1) if scrapes else None,
                    "median_bytes": int(statistics.median(s["bytes"] for s in scrapes)) if scrapes else None},
        "median_over_rounds": summary,
        "ratio_scraped_over_plain": ratios,
        "failed_requests": {side: sum(r["failed"] for r in runs[side]) for side in runs},
        "runs": runs,
    }
    out = RESULTS / "metrics_overhead.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
