"""/admin: releases (of the whole app, a model or a component), rollback, models removed, scale, LoRA adapters,
tenants, status, audit. Thin: each route depends on the gate's
``authorized(action)``, which authorizes and audits the call (serve_app/ingress/admin_gate.py) and gives it the
release controller (serve_app/release/controller.py), which acts. Each call on the controller has
``ingress.admin_timeout_s``: the controller answers a deploy or a rollback once it has started it, so a
controller that does not answer within it is wedged or gone (504)."""

# No ``from __future__ import annotations``: the routes' ``Annotated[..., authorized(...)]`` are built once,
# when the module is imported, rather than evaluated from strings by FastAPI.

import json
from collections import Counter
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Request
from pydantic import ValidationError

from serve_app.calls.handles import call
from serve_app.errors import InvalidRequest
from serve_app.ingress.admin_gate import authorized
from serve_app.ingress.context import context
from serve_app.protocol.admin import AdapterLoadRequest, DeployRequest, RollbackRequest, ScaleRequest

router = APIRouter()


async def _act(request: Request, controller, method: str, *args, extra_s: float = 0.0, **kwargs):
    """``method`` on the release controller within the admin deadline (plus ``extra_s``)."""
    timeout_s = context(request).settings.ingress.admin_timeout_s + extra_s
    return await call(controller, method, *args, timeout_s=timeout_s, **kwargs)


# What a route with parameters is recorded as, from those parameters: the same names and types as the route's,
# so FastAPI validates them before the call is recorded, and an invalid request (400) is not audited as an
# allowed call.
def _get_release(n: int) -> str:
    return f"get release {n}"


def _rollback(body: RollbackRequest) -> str:
    return "rollback" + (f" of model {body.model}" if body.model else f" of {body.component}" if body.component else "")


def _remove_model(name: str) -> str:
    return f"remove model {name}"


def _scale(body: ScaleRequest) -> str:
    return f"scale {body.deployment}"


def _load_adapter(body: AdapterLoadRequest) -> str:
    return f"load adapter {body.name}"


def _unload_adapter(name: str) -> str:
    return f"unload adapter {name}"


@router.get("/admin/status")
async def admin_status(request: Request, c: Annotated[Any, authorized("status")]):
    return await _act(request, c, "status")


@router.get("/admin/releases")
async def admin_releases(request: Request, c: Annotated[Any, authorized("list releases")]):
    return {"object": "list", "data": await _act(request, c, "releases")}


@router.get("/admin/config")
async def admin_config(request: Request, c: Annotated[Any, authorized("get config")]):
    """The running config (every scope's last good release composed): what a scoped release starts from."""
    return await _act(request, c, "config")


@router.get("/admin/releases/{n}")
async def admin_release(n: int, request: Request, c: Annotated[Any, authorized(_get_release)]):
    return await _act(request, c, "release", n)


@router.post("/admin/releases", status_code=202)
async def admin_deploy(request: Request, c: Annotated[Any, authorized("deploy")]):
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    try:
        data = yaml.safe_load(raw) if "yaml" in ctype else json.loads(raw or b"null")
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"the body is not valid {'YAML' if 'yaml' in ctype else 'JSON'}: {exc}"[:300]) from None
    if isinstance(data, dict) and "applications" in data:  # a bare config file; its scope in the query string
        data = {"config": data, **{k: v for k, v in request.query_params.items() if k in ("model", "component")}}
    try:
        body = DeployRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid release request: {exc}"[:1000], "config") from None
    actor = request.client.host if request.client else "?"
    return await _act(request, c, "deploy", body.config, f"admin@{actor}", body.note, canary=body.canary,
                      model=body.model, component=body.component)


@router.post("/admin/rollback", status_code=202)
async def admin_rollback(body: RollbackRequest, request: Request, c: Annotated[Any, authorized(_rollback)]):
    return await _act(request, c, "rollback", f"admin@{request.client.host if request.client else '?'}", body.release,
                      model=body.model, component=body.component)


@router.delete("/admin/models/{name:path}", status_code=202)
async def admin_remove_model(name: str, request: Request, c: Annotated[Any, authorized(_remove_model)]):
    actor = f"admin@{request.client.host if request.client else '?'}"
    return await _act(request, c, "remove_model", name, actor)


@router.post("/admin/scale", status_code=202)
async def admin_scale(body: ScaleRequest, request: Request, c: Annotated[Any, authorized(_scale)]):
    actor = f"admin@{request.client.host if request.client else '?'}"
    return await _act(request, c, "scale", body.deployment, body.replicas, body.factor, actor)


@router.get("/admin/adapters")
async def admin_adapters(request: Request, c: Annotated[Any, authorized("list adapters")]):
    return {"object": "list", "data": await _act(request, c, "adapters")}


@router.post("/admin/adapters", status_code=202)
async def admin_load_adapter(body: AdapterLoadRequest, request: Request,
                             c: Annotated[Any, authorized(_load_adapter)]):
    actor = f"admin@{request.client.host if request.client else '?'}"
    # The controller loads the adapter on one replica first, within releases.ready_timeout_s, and only then
    # starts the release.
    trial_s = context(request).settings.releases.ready_timeout_s
    return await _act(request, c, "load_adapter", body.model, body.name, body.path, actor, extra_s=trial_s)


@router.delete("/admin/adapters/{name:path}", status_code=202)
async def admin_unload_adapter(name: str, request: Request, c: Annotated[Any, authorized(_unload_adapter)]):
    actor = f"admin@{request.client.host if request.client else '?'}"
    return await _act(request, c, "unload_adapter", name, actor)


@router.get("/admin/audit")
async def admin_audit(request: Request, c: Annotated[Any, authorized("audit")]):
    return {"object": "list", "data": await _act(request, c, "audit_log")}


@router.get("/admin/tenants")
async def admin_tenants(request: Request, _: Annotated[Any, authorized("list tenants")]):
    """Every tenant: those of the active API keys and those with documents, with their counts of each. The
    keyless tenant ("") holds what was written while keys were off, and documents stored before tenants."""
    ctx = context(request)
    documents: dict[str, int] = await ctx.retrieval.call("tenants") if ctx.retrieval.enabled else {}
    keys = Counter(entry.owner for entry in (ctx.keys.active or {}).values())
    return {"object": "list", "data": [{"tenant": t, "documents": documents.get(t, 0), "keys": keys.get(t, 0)}
                                       for t in sorted(set(documents) | set(keys))]}
