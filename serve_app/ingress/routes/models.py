"""GET /v1/models and GET /v1/models/{id}: every chat model (as its vLLM engine lists it), every LoRA adapter
(its model as ``parent``) and the embedding model, as OpenAI model objects, limited to the models the caller's
API key may use."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from serve_app.calls.handles import call
from serve_app.errors import ModelNotFound
from serve_app.ingress.context import IngressContext, api_key, context
from serve_app.ingress.routing import key_allows

router = APIRouter()
# The ``created`` of a model whose engine did not answer, and of the embedder: when this ingress started.
_STARTED = int(time.time())


def _card(name: str, max_model_len: int | None = None) -> dict[str, Any]:
    card = {"id": name, "object": "model", "created": _STARTED, "owned_by": "serve_app", "root": name, "parent": None}
    if max_model_len is not None:
        card["max_model_len"] = max_model_len
    return card


async def _chat_cards(ctx: IngressContext, name: str, handle) -> list[dict[str, Any]]:
    """The model's cards as its engine lists them (the model, later its adapters); built from the settings when
    the engine does not answer in time, so one model that is down does not hide the others. A model that may
    scale to zero is not asked (a call would start it, or keep it from going cold): its card is the settings'."""
    if await ctx.models.zero.scales_to_zero(name):
        return [_card(name, ctx.settings.served_model(name).engine.max_model_len)]
    try:
        listed = await call(handle, "models", timeout_s=ctx.settings.ingress.health_timeout_s)
        # vLLM's root is the folder the weights were loaded from: a path of the server, not the client's. The
        # adapters one replica happens to hold are left out: every configured adapter is listed below.
        return [{**card, "root": card["id"]} if str(card.get("root") or "").startswith("/") else card
                for card in listed["data"] if not card.get("parent")]
    except Exception:  # noqa: BLE001 - the model is listed either way; /healthz says whether it serves
        return [_card(name, ctx.settings.served_model(name).engine.max_model_len)]


async def _cards(ctx: IngressContext, request: Request) -> list[dict[str, Any]]:
    key, models = api_key(request), ctx.models
    names = models.allowed_models(key)
    lists = await asyncio.gather(*(_chat_cards(ctx, name, models.models[name]) for name in names))
    cards = [card for cards in lists for card in cards]
    # Each LoRA adapter the key may use, with its model as ``parent`` (as `vllm serve` lists its adapters).
    cards += [{**_card(a), "parent": models.adapters[a]} for a in models.allowed_adapters(key)]
    embedder = models.embedder_name
    if embedder is not None and key_allows(key, embedder):
        cards.append(_card(embedder))
    return cards


@router.get("/v1/models")
async def list_models(request: Request, ctx: IngressContext = Depends(context)):
    return {"object": "list", "data": await _cards(ctx, request)}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, ctx: IngressContext = Depends(context)):
    for card in await _cards(ctx, request):
        if card["id"] == model_id:
            return card
    raise ModelNotFound(f"The model `{model_id}` does not exist.", "model")
