"""/v1/documents: ingest (chunk, embed, upsert; idempotent by id), read and delete documents in the vector tier."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam

from serve_app.ingress.context import IngressContext, context
from serve_app.protocol.retrieval import IngestRequest, IngestResponse
from serve_app.vector.limits import check_documents

router = APIRouter()


@router.post("/v1/documents", response_model=IngestResponse)
async def ingest_documents(body: IngestRequest, ctx: IngressContext = Depends(context)):
    docs = [d.model_dump() for d in body.documents]
    # Validated as a whole before any write (document count, ids, text length, metadata bounds): a bad document
    # refuses the request, nothing half-written. The write budget needs the chunk counts: the VectorStore
    # deployment checks it after chunking, still before writing.
    check_documents(docs, ctx.settings.vector)
    result = await ctx.retrieval.call("ingest", docs)
    return {"object": "ingest.result", "documents": result}


@router.get("/v1/documents/{document_id:path}")
async def get_document(document_id: str = PathParam(..., min_length=1, max_length=256),
                       ctx: IngressContext = Depends(context)):
    return await ctx.retrieval.call("get_document", document_id)


@router.delete("/v1/documents/{document_id:path}")
async def delete_document(document_id: str = PathParam(..., min_length=1, max_length=256),
                          ctx: IngressContext = Depends(context)):
    return await ctx.retrieval.call("delete_document", document_id)
