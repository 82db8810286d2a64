"""/v1/documents: ingest (chunk, embed, upsert; idempotent by id), read and delete documents in the vector tier."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam

from serve_app.errors import InvalidRequest, PayloadTooLarge
from serve_app.ingress.context import IngressContext, context
from serve_app.protocol.retrieval import IngestRequest, IngestResponse

router = APIRouter()


@router.post("/v1/documents", response_model=IngestResponse)
async def ingest_documents(body: IngestRequest, ctx: IngressContext = Depends(context)):
    s = ctx.settings.vector
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
    result = await ctx.vector_call("ingest", docs)
    return {"object": "ingest.result", "documents": result}


@router.get("/v1/documents/{document_id:path}")
async def get_document(document_id: str = PathParam(..., min_length=1, max_length=256),
                       ctx: IngressContext = Depends(context)):
    return await ctx.vector_call("get_document", document_id)


@router.delete("/v1/documents/{document_id:path}")
async def delete_document(document_id: str = PathParam(..., min_length=1, max_length=256),
                          ctx: IngressContext = Depends(context)):
    return await ctx.vector_call("delete_document", document_id)
