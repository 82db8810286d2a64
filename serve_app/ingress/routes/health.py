"""GET /healthz (readiness: every component's state, 503 when one is down), /livez (liveness) and /metrics
(the node's Prometheus exposition)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serve_app.errors import ServiceUnavailable
from serve_app.ingress.context import IngressContext, context

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request, ctx: IngressContext = Depends(context)):
    admin_on = request.app.state.admin.digest is not None
    probes = {}  # component -> (handle, its health method)
    # One component per served model: "llm" for the first, "llm:<served name>" for each other.
    llm_components = {name: "llm" if i == 0 else f"llm:{name}" for i, name in enumerate(ctx.models)}
    for name, component in llm_components.items():
        probes[component] = (ctx.models[name], "health")
    if ctx.vector is not None:
        probes["vector"] = (ctx.vector, "health")
        probes["embedder"] = (ctx.embedder, "info")
    if ctx.agent is not None:
        probes["agent"] = (ctx.agent, "health")
    if admin_on:
        # The release controller is required once the admin API is on (it watches and rolls back releases).
        probes["release_controller"] = (ctx.release_controller(), "health")
    ctx.set_release(ctx.release)
    results = await asyncio.gather(*(ctx.probe(handle, method) for handle, method in probes.values()))
    components = dict(zip(probes, results))
    for name, component in llm_components.items():
        if components[component]["status"] == "ok":
            ctx.availability[name].mark_up()
    healthy = all(c["status"] == "ok" for c in components.values())
    if not admin_on:
        components["release_controller"] = {"status": "disabled", "detail": "no admin key: the admin API is off"}
    elif components["release_controller"]["status"] != "ok":
        ctx.forget_release_controller()  # look it up (or start it) again on the next call
    body = {"status": "ok" if healthy else "unhealthy", "release": ctx.release, "components": components}
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/livez")
async def livez():
    return {"status": "ok"}


def _node_metrics_url() -> str:
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node["NodeID"] == node_id and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    raise ServiceUnavailable("this Ray node exports no metrics (no metrics export port)")


@router.get("/metrics")
async def metrics(ctx: IngressContext = Depends(context)):
    """Prometheus exposition of this node: the app's metrics (serve_app/observability/metrics.py), Ray
    Serve's and vLLM's, as Ray's metrics agent exports them. A multi-node cluster is scraped per node."""
    import httpx

    ctx.set_release(ctx.release)
    if ctx.metrics_url is None:
        ctx.metrics_url = await asyncio.to_thread(_node_metrics_url)
    try:
        async with httpx.AsyncClient(timeout=ctx.settings.ingress.health_timeout_s) as client:
            r = await client.get(ctx.metrics_url)
    except httpx.HTTPError as exc:
        ctx.metrics_url = None
        raise ServiceUnavailable(f"Ray's metrics agent on this node did not answer: {type(exc).__name__}") from None
    return Response(r.content, status_code=r.status_code,
                    media_type=r.headers.get("content-type", "text/plain; version=0.0.4"))
