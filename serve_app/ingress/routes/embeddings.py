"""POST /v1/embeddings: OpenAI's embeddings API, answered by the Embedder deployment."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request

from serve_app.errors import InvalidRequest, ModelNotFound
from serve_app.ingress.context import IngressContext, api_key, context
from serve_app.ingress.routing import key_allows
from serve_app.protocol.retrieval import EmbeddingRequest

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, ctx: IngressContext = Depends(context)):
    s = ctx.settings.vector
    embedder = ctx.retrieval.require_embedder()
    key = api_key(request)
    if body.model is not None and body.model != s.embedder_name or not key_allows(key, s.embedder_name):
        if body.model in ctx.models.allowed_models(key):
            raise InvalidRequest(f"`{body.model}` is a chat model: use it with /v1/chat/completions or "
                                 f"/v1/completions (embedding model: {s.embedder_name})", "model")
        raise ModelNotFound(f"The model `{body.model or s.embedder_name}` does not exist.", "model")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts or any(not t for t in texts):
        raise InvalidRequest("input must be a non-empty string or a list of non-empty strings", "input")
    if len(texts) > s.max_embedding_inputs:
        raise InvalidRequest(f"at most {s.max_embedding_inputs} inputs per request", "input")
    vecs, tokens = await ctx.retrieval.call("embed_with_usage", texts, handle=embedder)
    if body.dimensions is not None and body.dimensions != vecs.shape[1]:
        raise InvalidRequest(f"{s.embedder_name} only produces {vecs.shape[1]} dimensions", "dimensions")
    data = []
    for i, v in enumerate(vecs):
        if body.encoding_format == "base64":
            emb: Any = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        else:
            emb = v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": s.embedder_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
