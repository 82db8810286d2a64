"""Retrieval routes served by the vector tier: documents, search, OpenAI-compatible embeddings."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import Path as PathParam

from serve_app.calls.handles import awaited
from serve_app.config.settings import AppSettings
from serve_app.errors import InvalidRequest, ModelNotFound, NotFound, PayloadTooLarge, UpstreamTimeout
from serve_app.ingress.fastapi_app import app
from serve_app.protocol.retrieval import IngestRequest, IngestResponse, SearchRequest, SearchResponse, EmbeddingRequest


class RetrievalRoutes:
    """Mixed into the Ingress deployment, which provides ``self.vector``, ``self.embedder``, ``self.settings``."""

    vector: Any
    embedder: Any
    settings: AppSettings

    async def _vector_call(self, coro):
        if self.vector is None:
            raise NotFound("the retrieval tier is disabled in this deployment")
        try:
            return await asyncio.wait_for(awaited(coro), self.settings.vector.timeout_s)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"the vector tier did not answer within {self.settings.vector.timeout_s:g}s") from None

    @app.post("/v1/documents", response_model=IngestResponse)
    async def ingest_documents(self, body: IngestRequest):
        s = self.settings.vector
        if len(body.documents) > s.max_documents_per_request:
            raise InvalidRequest(f"at most {s.max_documents_per_request} documents per request", "documents")
        seen = set()
        for i, d in enumerate(body.documents):
            if len(d.text) > s.max_document_chars:
                raise PayloadTooLarge(f"document {i} is longer than {s.max_document_chars} characters", f"documents.{i}.text")
            if d.id in seen:
                raise InvalidRequest(f"document id {d.id!r} appears twice", f"documents.{i}.id")
            seen.add(d.id)
        # Validated as a whole before any write: a bad document refuses the request, nothing half-written.
        docs = [d.model_dump() for d in body.documents]
        result = await self._vector_call(self.vector.ingest.remote(docs))
        return {"object": "ingest.result", "documents": result}

    @app.get("/v1/documents/{document_id:path}")
    async def get_document(self, document_id: str = PathParam(..., min_length=1, max_length=256)):
        return await self._vector_call(self.vector.get_document.remote(document_id))

    @app.delete("/v1/documents/{document_id:path}")
    async def delete_document(self, document_id: str = PathParam(..., min_length=1, max_length=256)):
        return await self._vector_call(self.vector.delete_document.remote(document_id))

    @app.post("/v1/search", response_model=SearchResponse)
    async def search(self, body: SearchRequest):
        s = self.settings.vector
        if not 1 <= body.top_k <= s.max_top_k:
            raise InvalidRequest(f"top_k must be between 1 and {s.max_top_k}", "top_k")
        hits = await self._vector_call(self.vector.search.remote(body.query, body.top_k, body.filter, body.score_threshold))
        return {"object": "search.result", "results": hits}

    @app.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingRequest):
        s = self.settings.vector
        if self.embedder is None:
            raise NotFound("the retrieval tier is disabled in this deployment")
        if body.model is not None and body.model != s.embedder_name:
            raise ModelNotFound(f"The model `{body.model}` does not exist.", "model")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or any(not t for t in texts):
            raise InvalidRequest("input must be a non-empty string or a list of non-empty strings", "input")
        if len(texts) > s.max_embedding_inputs:
            raise InvalidRequest(f"at most {s.max_embedding_inputs} inputs per request", "input")
        vecs, tokens = await self._vector_call(self.embedder.embed_with_usage.remote(texts))
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
