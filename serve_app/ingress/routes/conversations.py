"""Conversations of the Responses API: POST /v1/conversations, GET / POST (metadata) / DELETE
/v1/conversations/{id}, and its items: GET and POST /v1/conversations/{id}/items, GET and DELETE
/v1/conversations/{id}/items/{item_id}. A response made with ``conversation`` adds its input and output items
to it (serve_app/ingress/responses.py). Every conversation is its API key's tenant's."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request

from serve_app.errors import NotFound
from serve_app.ingress.context import IngressContext, context, tenant_of
from serve_app.ingress.responses import Responses, page
from serve_app.protocol.responses import ID_PATTERN, ConversationCreate, ConversationUpdate, ItemsCreate
from serve_app.responses.items import canonical, check_ids, new_id

router = APIRouter()
T = TypeVar("T")

ConversationId = Annotated[str, Path(pattern=ID_PATTERN)]
ItemId = Annotated[str, Path(pattern=ID_PATTERN)]


def _missing(conversation_id: str) -> NotFound:
    return NotFound(f"No conversation found with id '{conversation_id}'.")


def _found(value: T | None, conversation_id: str) -> T:
    """What the store found of the tenant's conversation; None (none such) is a 404."""
    if value is None:
        raise _missing(conversation_id)
    return value


async def _items(ctx: IngressContext, request: Request, conversation_id: str) -> list[dict[str, Any]]:
    r = Responses(ctx)
    return _found(await r.run(r.db().items, tenant_of(request), conversation_id), conversation_id)


@router.post("/v1/conversations")
async def create_conversation(body: ConversationCreate, request: Request, ctx: IngressContext = Depends(context)):
    items = canonical(body.items or [])
    check_ids([], items)
    r = Responses(ctx)
    return await r.run(r.db().create_conversation, tenant_of(request), new_id("conv"), body.metadata or {}, items)


@router.get("/v1/conversations/{conversation_id}")
async def get_conversation(conversation_id: ConversationId, request: Request, ctx: IngressContext = Depends(context)):
    r = Responses(ctx)
    return _found(await r.run(r.db().conversation, tenant_of(request), conversation_id), conversation_id)


@router.post("/v1/conversations/{conversation_id}")
async def update_conversation(conversation_id: ConversationId, body: ConversationUpdate, request: Request,
                              ctx: IngressContext = Depends(context)):
    r = Responses(ctx)
    return _found(await r.run(r.db().update_conversation, tenant_of(request), conversation_id, body.metadata),
                  conversation_id)


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(conversation_id: ConversationId, request: Request, ctx: IngressContext = Depends(context)):
    r = Responses(ctx)
    if not await r.run(r.db().delete_conversation, tenant_of(request), conversation_id):
        raise _missing(conversation_id)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.get("/v1/conversations/{conversation_id}/items")
async def list_items(conversation_id: ConversationId, request: Request, after: str | None = None,
                     limit: int = Query(default=20, ge=1, le=100), order: Literal["asc", "desc"] = "desc",
                     ctx: IngressContext = Depends(context)):
    return page(await _items(ctx, request, conversation_id), after, limit, order)


@router.post("/v1/conversations/{conversation_id}/items")
async def add_items(conversation_id: ConversationId, body: ItemsCreate, request: Request, ctx: IngressContext = Depends(context)):
    items = canonical(body.items)
    check_ids(await _items(ctx, request, conversation_id), items)
    r = Responses(ctx)
    if not await r.run(r.db().add_items, tenant_of(request), conversation_id, items):
        raise _missing(conversation_id)
    return page(items, None, len(items), "asc")


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: ConversationId, item_id: ItemId, request: Request, ctx: IngressContext = Depends(context)):
    r = Responses(ctx)
    item = _found(await r.run(r.db().item, tenant_of(request), conversation_id, item_id), conversation_id)
    if item is not False:
        return item
    raise NotFound(f"No item found with id '{item_id}' in this conversation.")


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
async def delete_item(conversation_id: ConversationId, item_id: ItemId, request: Request, ctx: IngressContext = Depends(context)):
    r = Responses(ctx)
    if not _found(await r.run(r.db().delete_item, tenant_of(request), conversation_id, item_id), conversation_id):
        raise NotFound(f"No item found with id '{item_id}' in this conversation.")
    return await get_conversation(conversation_id, request, ctx)
