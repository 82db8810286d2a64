"""/v1/files: document files (PDF, Word, HTML, Markdown, text) uploaded as multipart, as OpenAI's Files API
takes them (``file``, ``purpose``), each becoming one document of the API key's tenant; the file object's
``status`` (``uploaded``, ``processed``, ``error``) at its URL. The work is serve_app/ingress/files.py."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile

from serve_app.ingress.context import IngressContext, context, tenant_of
from serve_app.ingress.files import Uploads

router = APIRouter()
FileId = Path(..., min_length=1, max_length=64)


@router.post("/v1/files")
async def upload_file(request: Request, file: UploadFile = File(...),
                      purpose: str = Form("assistants", max_length=64),
                      document_id: str | None = Form(None, min_length=1, max_length=256),
                      ctx: IngressContext = Depends(context)):
    """``document_id``: the document the file becomes (default: the file's name; the same name again replaces
    it, the same content again changes nothing)."""
    return await Uploads(ctx).upload(tenant_of(request), file, document_id)


@router.get("/v1/files")
async def list_files(request: Request, limit: int = Query(default=100, ge=1, le=1000),
                     ctx: IngressContext = Depends(context)):
    return await Uploads(ctx).list(tenant_of(request), limit)


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str = FileId, ctx: IngressContext = Depends(context)):
    return await Uploads(ctx).get(tenant_of(request), file_id)


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str = FileId, ctx: IngressContext = Depends(context)):
    return await Uploads(ctx).delete(tenant_of(request), file_id)
