"""Suite scenarios on the app's operations: autoscaling under a step in load, and a good and a bad release
while traffic flows (benchmarks/suite.py runs them)."""

from __future__ import annotations

import asyncio
import copy
import time

import httpx

from benchmarks.context import Context, deploy, pyplot, replicas

# ------------------------------------------------------------------------------------------ autoscaling


def autoscaling(ctx: Context) -> dict:
    """A step from 1 to 8 concurrent agent runs against target_ongoing_requests 2 on the Agent deployment
    (1..2 replicas, num_cpus 0): when the second replica is running, and the latency of runs started before,
    during and after the scale-up."""
    from benchmarks.rag_agent import TASKS

    app = ctx.app()
    admin, url = app["admin"], app["url"]
    base = admin.current_config()
    config = copy.deepcopy(base)
    for d in config["applications"][0]["deployments"]:
        if d["name"] == "Agent":
            d["autoscaling_config"] = {**d.get("autoscaling_config", {}), "min_replicas": 1, "max_replicas": 2,
                                       "target_ongoing_requests": 2, "upscale_delay_s": 2, "downscale_delay_s": 20,
                                       "metrics_interval_s": 1, "look_back_period_s": 2}
    deploy(admin, config, "autoscaling benchmark: low agent target")
    records: list[dict] = []

    async def client(c: httpx.AsyncClient, stop: float, i: int):
        while time.time() < stop:
            t = time.time()
            r = await c.post("/v1/agent", json={"task": TASKS[i % len(TASKS)], "max_steps": 2})
            records.append({"t": t, "end": time.time(), "ok": r.status_code == 200})

    async def drive():
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            t0 = time.time()
            base_load = asyncio.ensure_future(client(c, t0 + 60, 0))
            await asyncio.sleep(15)
            step_at = time.time()
            step = [asyncio.ensure_future(client(c, step_at + 30, i)) for i in range(1, 8)]
            replicas_at = None
            while replicas_at is None and time.time() < step_at + 120:
                if replicas(admin, "Agent") >= 2:
                    replicas_at = time.time()
                await asyncio.sleep(0.5)
            await asyncio.gather(base_load, *step)
            return t0, step_at, replicas_at

    try:
        t0, step_at, replicas_at = asyncio.run(drive())
        down_at = None
        deadline = time.time() + 120
        while time.time() < deadline:
            if replicas(admin, "Agent") == 1:
                down_at = time.time()
                break
            time.sleep(1)
    finally:
        deploy(admin, base, "autoscaling benchmark: back to the configured target")

    def lat(rows):
        xs = sorted(r["end"] - r["t"] for r in rows if r["ok"])
        return round(xs[len(xs) // 2] * 1000) if xs else None

    before = [r for r in records if r["end"] < step_at]
    during = [r for r in records if r["t"] >= step_at and (replicas_at is None or r["t"] < replicas_at)]
    after = [r for r in records if replicas_at is not None and r["t"] >= replicas_at]
    summary = {"step_to_second_replica_running_s": None if replicas_at is None else round(replicas_at - step_at, 1),
               "scaled_back_to_1_after_load_s": None if down_at is None else round(down_at - step_at, 1),
               "latency_p50_ms_before": lat(before), "latency_p50_ms_during_scale_up": lat(during),
               "latency_p50_ms_after_scale_up": lat(after), "runs": len(records),
               "failed": sum(not r["ok"] for r in records)}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([r["t"] - t0 for r in records], [r["end"] - r["t"] for r in records], ".", label="agent run latency (s)")
    ax.axvline(step_at - t0, color="tab:orange", ls="--", label="load step 1 -> 8 clients")
    if replicas_at:
        ax.axvline(replicas_at - t0, color="tab:green", ls="--", label="second replica running")
    ax.set_xlabel("seconds (by run start)")
    ax.legend()
    ax.set_title("Autoscaling: a step in agent load")
    fig.tight_layout()
    fig.savefig(ctx.out / "autoscaling.png", dpi=100)
    return {"title": "Autoscaling spike (Agent deployment, target_ongoing_requests 2)", "rows": records,
            "ratios": [summary]}


# ---------------------------------------------------------------------------------------------- rollout


def rollout(ctx: Context) -> dict:
    from benchmarks.releases import plot
    from benchmarks.releases import rollout as one_rollout

    app = ctx.app()
    admin, url, model = app["admin"], app["url"], app["model"]
    base = admin.current_config()
    good = copy.deepcopy(base)
    good["applications"][0]["args"]["rag"]["default_top_k"] = 3
    bad = copy.deepcopy(base)
    bad["applications"][0]["args"]["model"].update(source="/nonexistent/model", served_name=model)
    runs = [one_rollout(url, admin, model, good, "good release (a RAG setting: only the ingress is replaced)"),
            one_rollout(url, admin, model, bad, "bad release (LLM model path does not exist)")]
    plot({"rollouts": runs}, ctx.out / "rollout.png")
    rows = [{"rollout": r["label"], "since_deploy_s": round(x["t"] - r["deploy_at"], 3), **x}
            for r in runs for x in r["records"]]
    ratios = [{k: v for k, v in r.items() if k not in ("records", "deploy_at", "settled_at")} for r in runs]
    return {"title": "Rollouts under load (4 chat clients, half streaming)", "rows": rows, "ratios": ratios}
