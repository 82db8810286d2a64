"""/admin: releases, rollback, scale, LoRA adapters, status, audit. Thin: the gate authorizes and audits
(serve_app/ingress/admin_gate.py), then the release controller (serve_app/release/controller.py) acts. Each
call on the controller has ``ingress.admin_timeout_s``: the controller answers a deploy or a rollback once it
has started it, so a controller that does not answer within it is wedged or gone (504)."""

from __future__ import annotations

import json

import yaml
from fastapi import APIRouter, Request

from serve_app.calls.handles import call
from serve_app.errors import InvalidRequest
from serve_app.ingress.admin_gate import AdminGate
from serve_app.ingress.context import context
from serve_app.protocol.admin import AdapterLoadRequest, DeployRequest, RollbackRequest, ScaleRequest

router = APIRouter()


def gate(request: Request) -> AdminGate:
    return request.app.state.admin


async def _act(request: Request, controller, method: str, *args, extra_s: float = 0.0, **kwargs):
    """``method`` on the release controller within the admin deadline (plus ``extra_s``)."""
    timeout_s = context(request).settings.ingress.admin_timeout_s + extra_s
    return await call(controller, method, *args, timeout_s=timeout_s, **kwargs)


@router.get("/admin/status")
async def admin_status(request: Request):
    c = await gate(request).authorize(request, "status")
    return await _act(request, c, "status")


@router.get("/admin/releases")
async def admin_releases(request: Request):
    c = await gate(request).authorize(request, "list releases")
    return {"object": "list", "data": await _act(request, c, "releases")}


@router.get("/admin/releases/{n}")
async def admin_release(n: int, request: Request):
    c = await gate(request).authorize(request, f"get release {n}")
    return await _act(request, c, "release", n)


@router.post("/admin/releases", status_code=202)
async def admin_deploy(request: Request):
    c = await gate(request).authorize(request, "deploy")
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    try:
        data = yaml.safe_load(raw) if "yaml" in ctype else json.loads(raw or b"null")
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"the body is not valid {'YAML' if 'yaml' in ctype else 'JSON'}: {exc}"[:300]) from None
    if isinstance(data, dict) and "applications" in data:
        data = {"config": data}
    try:
        body = DeployRequest.model_validate(data)
    except Exception as exc:  # pydantic ValidationError
        raise InvalidRequest(f"invalid release request: {exc}"[:1000], "config") from None
    actor = request.client.host if request.client else "?"
    return await _act(request, c, "deploy", body.config, f"admin@{actor}", body.note, canary=body.canary)


@router.post("/admin/rollback", status_code=202)
async def admin_rollback(body: RollbackRequest, request: Request):
    c = await gate(request).authorize(request, "rollback")
    return await _act(request, c, "rollback", f"admin@{request.client.host if request.client else '?'}", body.release)


@router.post("/admin/scale", status_code=202)
async def admin_scale(body: ScaleRequest, request: Request):
    c = await gate(request).authorize(request, f"scale {body.deployment}")
    actor = f"admin@{request.client.host if request.client else '?'}"
    return await _act(request, c, "scale", body.deployment, body.replicas, body.factor, actor)


@router.get("/admin/adapters")
async def admin_adapters(request: Request):
    c = await gate(request).authorize(request, "list adapters")
    return {"object": "list", "data": await _act(request, c, "adapters")}


@router.post("/admin/adapters", status_code=202)
async def admin_load_adapter(body: AdapterLoadRequest, request: Request):
    c = await gate(request).authorize(request, f"load adapter {body.name}")
    actor = f"admin@{request.client.host if request.client else '?'}"
    # The controller loads the adapter on one replica first, within releases.ready_timeout_s, and only then
    # starts the release.
    trial_s = context(request).settings.releases.ready_timeout_s
    return await _act(request, c, "load_adapter", body.model, body.name, body.path, actor, extra_s=trial_s)


@router.delete("/admin/adapters/{name:path}", status_code=202)
async def admin_unload_adapter(name: str, request: Request):
    c = await gate(request).authorize(request, f"unload adapter {name}")
    actor = f"admin@{request.client.host if request.client else '?'}"
    return await _act(request, c, "unload_adapter", name, actor)


@router.get("/admin/audit")
async def admin_audit(request: Request):
    c = await gate(request).authorize(request, "audit")
    return {"object": "list", "data": await _act(request, c, "audit_log")}
