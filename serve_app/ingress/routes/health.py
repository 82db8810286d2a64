"""GET /healthz (readiness: every component's state, 503 when one is down; answered from the background
probes of serve_app/ingress/health_monitor.py), /livez (liveness) and /metrics (the node's Prometheus
exposition)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serve_app.errors import Forbidden, ServiceUnavailable, Unauthorized
from serve_app.ingress.admin_gate import check_admin
from serve_app.ingress.context import IngressContext, context
from serve_app.ingress.health_monitor import public
from serve_app.protocol.replicas import UP

router = APIRouter()


# A /healthz that finds the monitor not started (no event loop when the app was built) starts it and waits
# this long for the first probes: well within the 1 s a readiness probe allows; components that answer at
# once are reported on that first call, the others as not probed yet (503) until they answer.
FIRST_ROUND_S = 0.3


def _full_view(request: Request) -> bool:
    """Everything (process ids, errors) with API keys off, or for the admin key; states only otherwise (also
    while the replica has not read the keys yet)."""
    ctx = context(request)
    if ctx.keys.loaded and ctx.api_keys is None:  # ``loaded`` first: the keys are set before it
        return True
    try:
        check_admin(request.headers.raw, ctx.admin.digest, ctx.api_keys)
        return True
    except (Forbidden, Unauthorized):
        return False


@router.get("/healthz")
async def healthz(request: Request, ctx: IngressContext = Depends(context)):
    """Readiness: every component's last probe (``age_s`` old), 503 when one is down. Answers from memory."""
    monitor = ctx.health
    if not monitor.first_round_done():
        await monitor.first_round(FIRST_ROUND_S)
    components = monitor.snapshot()
    # A model at zero replicas, or starting from zero, is as it should be (serve_app/ingress/replicas.py).
    healthy = all(c["status"] in UP for c in components.values())
    if "release_controller" not in components:
        components["release_controller"] = {"status": "disabled", "detail": "no admin key: the admin API is off"}
    release = ctx.releases.release
    ctx.releases.set_release(release)
    status = "ok" if healthy else "unhealthy"
    if _full_view(request):
        body = {"status": status, "release": release, "components": components}
    else:
        body = {"status": status, "components": public(components)}
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

    ctx.releases.set_release(ctx.releases.release)
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
