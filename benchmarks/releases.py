"""Rollouts under load: a good release and a release whose LLM cannot start, while chat traffic flows.

Starts the app the way `make serve` does (with an admin key), sends bounded chat traffic on loopback
(non-streaming requests and streams) during each rollout (a good and a bad release, a bad and a good canary), and records every request (start, end, status,
whether a stream completed). Figures: failed requests per rollout and when they happened, the time from the
failed release's deploy to the previous release serving again, the good release's time to healthy.

    python -m benchmarks.releases

Writes benchmarks/results/releases.json and releases.png (requests/s and errors over time, with the
deploys and the rollback marked).
"""

from __future__ import annotations

import copy
import json
import secrets
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks._servers import ROOT, serve_app
from benchmarks.load import Load
from serve_app.admin_client import AdminClient

RESULTS = ROOT / "benchmarks" / "results"
# A release here ends within the controller's bounds (ready_timeout_s 240 s, a 30 s canary window); one still
# deploying after this means the benchmark is measuring something broken.
FOLLOW_TIMEOUT_S = 900.0


def rollout(url: str, admin: AdminClient, model: str, config: dict, label: str, canary: dict | None = None) -> dict:
    with Load(url, model) as load:
        time.sleep(5)
        t_deploy = time.time()
        n = admin.deploy(config, label, canary)["release"]
        rel = admin.follow(n, FOLLOW_TIMEOUT_S)
        back = admin.follow(rel["rolled_back_to"], FOLLOW_TIMEOUT_S) if rel.get("rolled_back_to") else None
        t_end = time.time()
        time.sleep(10)
    failed = [r for r in load.records if not r["ok"]]
    out = {
        "label": label,
        "release": n,
        "status": rel["status"],
        "outcome": rel["outcome"],
        "deploy_at": t_deploy,
        "settled_at": t_end,
        "requests": len(load.records),
        "streams": sum(r["stream"] for r in load.records),
        "failed": len(failed),
        "failed_statuses": sorted({str(r["status"]) for r in failed}),
        "failure_window_s": (max(r["end"] for r in failed) - min(r["t"] for r in failed)) if failed else 0.0,
        "records": load.records,
    }
    if back is not None:
        out["rolled_back_to"] = back["n"]
        out["rollback_status"] = back["status"]
        # From the deploy of the failed release until the previous configuration is healthy again.
        out["deploy_to_previous_serving_s"] = back["finished_at"] - rel["created_at"]
        out["failure_detected_s"] = rel["finished_at"] - rel["created_at"]
    elif rel["status"] == "good":
        out["deploy_to_good_s"] = rel["finished_at"] - rel["created_at"]
    else:
        # A canary rolled back: the current release never stopped; the canary was removed after this long.
        out["deploy_to_canary_removed_s"] = rel["finished_at"] - rel["created_at"]
    if canary is not None:
        out["canary"] = canary
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(result["rollouts"]), 1, figsize=(11, 3.6 * len(result["rollouts"])))
    for ax, ro in zip(axes, result["rollouts"], strict=True):
        t0 = ro["deploy_at"] - 5
        recs = ro["records"]
        end = max(r["end"] for r in recs) - t0
        bins = range(0, int(end) + 2)
        ok = [0] * len(bins)
        bad = [0] * len(bins)
        for r in recs:
            i = min(int(r["end"] - t0), len(bins) - 1)
            (ok if r["ok"] else bad)[i] += 1
        ax.bar(list(bins), ok, width=1.0, color="tab:green", label="completed / s")
        ax.bar(list(bins), bad, width=1.0, bottom=ok, color="tab:red", label="failed / s")
        ax.axvline(ro["deploy_at"] - t0, color="k", ls="--", label="deploy")
        ax.axvline(ro["settled_at"] - t0, color="tab:blue", ls=":", label="good" if ro["status"] == "good" else "rolled back, healthy")
        ax.set_title(f"{ro['label']}: release {ro['release']} {ro['status']}; {ro['failed']} of {ro['requests']} requests failed")
        ax.set_xlabel("seconds")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    key = secrets.token_hex(16)
    with tempfile.TemporaryDirectory() as data:
        env = {"SERVE_APP_DATA_DIR": data, "SERVE_APP_ADMIN_KEY": key}
        with serve_app("configs/dev-cpu.yaml", Path(data) / "app.log", env=env) as (url, ready_s):
            admin = AdminClient(url, key)
            model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            base = admin.current_config()
            good = copy.deepcopy(base)
            good["applications"][0]["args"]["rag"]["default_top_k"] = 3
            bad = copy.deepcopy(base)
            bad["applications"][0]["args"]["model"].update(source="/nonexistent/model", served_name=model)
            short = copy.deepcopy(base)  # a real fault under a canary: prompts longer than its context → 400
            short["applications"][0]["args"]["engine"]["max_model_len"] = 32
            batch = copy.deepcopy(base)
            batch["applications"][0]["args"]["engine"]["max_num_seqs"] = 32
            canary = {"share": 0.2, "window_s": 30, "min_requests": 10}
            rollouts = [rollout(url, admin, model, good, "good release (a RAG setting: only the ingress is replaced)"),
                        rollout(url, admin, model, bad, "bad release (LLM model path does not exist)"),
                        rollout(url, admin, model, short, "bad canary, 20 % (context too short)", canary),
                        rollout(url, admin, model, batch, "good canary, 20 %, promoted (max_num_seqs 32)",
                                {**canary, "max_ttft_p99_ratio": 4.0, "ttft_slack_ms": 2000})]
            for ro in rollouts:
                print(json.dumps({k: v for k, v in ro.items() if k != "records"}, indent=1))
    result = {"command": "python -m benchmarks.releases", "ready_s": ready_s, "rollouts": rollouts}
    out = RESULTS / "releases.json"
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
