"""/v1/documents: ingest (chunk, embed, upsert; idempotent by id and content), list, read and delete documents in
the vector tier. Every call names the API key's tenant: another tenant's document reads as absent (404), exactly
like an unknown one, and is never listed, changed or deleted."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam

from serve_app.ingress.context import IngressContext, context, tenant_of
from serve_app.protocol.retrieval import DocumentList, IngestRequest, IngestResponse
from serve_app.vector.limits import check_documents

router = APIRouter()
DocumentId = PathParam(..., min_length=1, max_length=256)


@router.post("/v1/documents", response_model=IngestResponse)
async def ingest_documents(body: IngestRequest, request: Request, ctx: IngressContext = Depends(context)):
    docs = [d.model_dump() for d in body.documents]
    # Validated as a whole before any write (document count, ids, text length, metadata bounds): a bad document
    # refuses the request, nothing half-written. The write budget needs the chunk counts: the VectorStore
    # deployment checks it after chunking, still before writing.
    check_documents(docs, ctx.settings.vector)
    result = await ctx.retrieval.call("ingest", docs, tenant=tenant_of(request))
    return {"object": "ingest.result", "documents": result}


@router.get("/v1/documents", response_model=DocumentList)
async def list_documents(request: Request, limit: int = Query(default=20, ge=1, le=100),
                         after: str | None = Query(default=None, min_length=1, max_length=256),
                         ctx: IngressContext = Depends(context)):
    """The tenant's documents, a page at a time (``after``: the previous page's ``last_id``)."""
    return await ctx.retrieval.call("list_documents", limit, after, tenant=tenant_of(request))


@router.get("/v1/documents/{document_id:path}")
async def get_document(request: Request, document_id: str = DocumentId, ctx: IngressContext = Depends(context)):
    return await ctx.retrieval.call("get_document", document_id, tenant=tenant_of(request))


@router.delete("/v1/documents/{document_id:path}")
async def delete_document(request: Request, document_id: str = DocumentId, ctx: IngressContext = Depends(context)):
    return await ctx.retrieval.call("delete_document", document_id, tenant=tenant_of(request))
