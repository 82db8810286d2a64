"""Bad files against a running app (loopback only, bounded counts): each kind uploaded to /v1/files a few times
while /healthz is polled, and the ingress replica's memory sampled.

Files (made here with the libraries, tests/documents.py): an encrypted PDF, a damaged PDF, a scanned PDF without
a text layer, a Word document of under 100 KB that expands past 1 GiB (zip bomb), a PDF-named HTML page, a 50 MB
HTML page (over files.max_bytes). Reports per kind: the status and message, the upload time (p50, max), and
for the whole run /healthz latency (p50, p99, max, how many over 1 s) and the ingress replica's resident memory
(before, peak, after; found by its process title). A good file (a 40-page PDF) is uploaded as the baseline.

    python -m benchmarks.files --url http://127.0.0.1:8000 [--repeats 3]

Writes benchmarks/results/files.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests import documents

OUT = Path(__file__).resolve().parent / "results" / "files.json"


def _ingress_process() -> psutil.Process | None:
    """The ingress replica (Ray titles its worker ``ray::ServeReplica:<app>:Ingress``)."""
    for p in psutil.process_iter(["cmdline"]):
        if any("ServeReplica" in part and ":Ingress" in part for part in p.info["cmdline"] or ()):
            return p
    return None


def _files(folder: Path) -> dict[str, Path]:
    big = folder / "big.html"
    with big.open("w") as f:
        f.write("<html><body><main>")
        for i in range(50 * 1024 * 1024 // 64):
            f.write(f"<p>Paragraph {i:08d} of a very long page about nothing.</p>\n"[:64])
        f.write("</main></body></html>")
    (folder / "page.pdf").write_text(documents.html("Not a PDF", [(1, "A web page"), (0, "Named as a PDF.")]))
    return {
        "good-40-pages.pdf": documents.pdf(folder / "good.pdf", [f"Page {i}: " + "words of a report " * 60
                                                                  for i in range(40)]),
        "encrypted.pdf": documents.encrypted_pdf(folder / "encrypted.pdf"),
        "damaged.pdf": documents.damaged_pdf(folder / "damaged.pdf"),
        "scanned.pdf": documents.scanned_pdf(folder / "scanned.pdf", 20),
        "zip-bomb.docx": documents.zip_bomb_docx(folder / "bomb.docx"),
        "lying-name.pdf": folder / "page.pdf",
        "50MB.html": big,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ingress = _ingress_process()
    rss = [ingress.memory_info().rss] if ingress else []
    health: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=args.url, timeout=5) as c:
            while not stop.is_set():
                t = time.perf_counter()
                c.get("/healthz")
                health.append(time.perf_counter() - t)
                if ingress:
                    rss.append(ingress.memory_info().rss)
                time.sleep(0.05)

    results = {}
    with tempfile.TemporaryDirectory(prefix="files-bench-") as tmp:
        files = _files(Path(tmp))
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        with httpx.Client(base_url=args.url, timeout=120) as c:
            for name, path in files.items():
                times, answers = [], []
                for i in range(args.repeats):
                    t = time.perf_counter()
                    with path.open("rb") as f:
                        r = c.post("/v1/files", files={"file": (name, f)}, data={"document_id": f"bench-{i}-{name}"})
                    times.append(time.perf_counter() - t)
                    body = r.json()
                    answers.append((r.status_code, body.get("error", {}).get("message") or body.get("status")))
                results[name] = {"bytes": path.stat().st_size, "status": answers[0][0], "answer": answers[0][1],
                                 "same_every_time": len(set(answers)) == 1,
                                 "seconds_p50": round(statistics.median(times), 3), "seconds_max": round(max(times), 3)}
                print(f"{name:>20}: {answers[0][0]} in {max(times):.2f}s max: {str(answers[0][1])[:100]}", flush=True)
        stop.set()
        poller.join()
    health.sort()
    report = {
        "repeats": args.repeats, "files": results,
        "healthz": {"n": len(health), "p50_ms": round(1000 * statistics.median(health), 1),
                    "p99_ms": round(1000 * health[int(0.99 * (len(health) - 1))], 1),
                    "max_ms": round(1000 * health[-1], 1), "over_1s": sum(h > 1 for h in health)},
        "ingress_rss_mb": {"before": round(rss[0] / 2**20, 1), "peak": round(max(rss) / 2**20, 1),
                           "after": round(rss[-1] / 2**20, 1), "growth_peak": round((max(rss) - rss[0]) / 2**20, 1)}
        if rss else None,
    }
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "files"}, indent=1))


if __name__ == "__main__":
    main()
