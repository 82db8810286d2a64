"""/admin/keys: API keys made, listed, changed and revoked at run time, in the state store
(serve_app/state/keys.py). Each call is authorized and audited like every admin route; the answer of a
create is the only time the key itself is shown. A change holds on this replica at once and on every other
within the key book's poll (serve_app/ingress/keybook.py)."""

# No ``from __future__ import annotations``: the routes' ``Annotated[..., authorized(...)]`` are built once.

import asyncio
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from serve_app.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from serve_app.ingress.admin_gate import authorized
from serve_app.ingress.context import IngressContext, context
from serve_app.ingress.limits import digest
from serve_app.protocol.keys import KeyChangeRequest, KeyCreateRequest, KeyEntry
from serve_app.state import store
from serve_app.state.keys import KeyExists, KeyNotFound, KeyStore

router = APIRouter()


def _create(body: KeyCreateRequest) -> str:
    return f"create key {body.name}"


def _change(name: str, body: KeyChangeRequest) -> str:
    return f"change key {name}"


def _revoke(name: str) -> str:
    return f"revoke key {name}"


def _store(ctx: IngressContext) -> KeyStore:
    if ctx.keys.store is None:
        raise ServiceUnavailable("this replica has no state store")
    return ctx.keys.store


def _where(ctx: IngressContext) -> str:
    return store.shown(str(_store(ctx).engine.url))


def _check_models(ctx: IngressContext, models: list[str] | None) -> None:
    served = set(ctx.models.models) | set(ctx.models.adapters) | {ctx.models.embedder_name}
    unknown = sorted(set(models or ()) - served)
    if unknown:
        raise InvalidRequest(f"unknown model(s) {unknown}: models names served models or adapters", "models")


async def _write(ctx: IngressContext, fn, *args) -> Any:
    """A key write in a thread; the store not answering is a 503 (the public API goes on with the keys every
    replica last read). This replica's key book is read again at once."""
    try:
        record = await asyncio.to_thread(fn, *args)
    except KeyExists as exc:
        raise Conflict(str(exc), "name") from None
    except KeyNotFound as exc:
        raise NotFound(str(exc)) from None
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(f"the state store {_where(ctx)} does not answer ({type(exc).__name__}); no key was "
                                 "changed") from None
    try:
        await asyncio.to_thread(ctx.keys.refresh)
    except SQLAlchemyError:
        pass  # written; the key book's poll reads it when the store answers again
    return record


@router.get("/admin/keys")
async def list_keys(request: Request, c: Annotated[Any, authorized("list keys")]):
    try:
        data = await asyncio.to_thread(_store(context(request)).records)
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(f"the state store {_where(context(request))} does not answer "
                                 f"({type(exc).__name__})") from None
    return {"object": "list", "data": data}


@router.post("/admin/keys", status_code=201)
async def create_key(body: KeyCreateRequest, request: Request, c: Annotated[Any, authorized(_create)]):
    ctx = context(request)
    _check_models(ctx, body.models)
    key = f"sk-{secrets.token_urlsafe(32)}"
    entry = KeyEntry(sha256=digest(key), **body.model_dump(exclude_none=True))
    record = await _write(ctx, _store(ctx).create, entry)
    return {**record, "key": key}


@router.patch("/admin/keys/{name}")
async def change_key(name: str, body: KeyChangeRequest, request: Request, c: Annotated[Any, authorized(_change)]):
    ctx = context(request)
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise InvalidRequest("nothing to change: give tenant, scopes, models, requests_per_minute or tokens_per_minute")
    if changes.get("scopes", ...) is None or changes.get("tenant", ...) is None:
        raise InvalidRequest("scopes and tenant cannot be cleared", "scopes" if "scopes" in changes else "tenant")
    _check_models(ctx, changes.get("models"))
    return await _write(ctx, _store(ctx).update, name, changes)


@router.delete("/admin/keys/{name}")
async def revoke_key(name: str, request: Request, c: Annotated[Any, authorized(_revoke)]):
    ctx = context(request)
    return await _write(ctx, _store(ctx).revoke, name)
