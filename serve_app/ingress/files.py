"""Document files uploaded through /v1/files: the upload streamed to disk (Starlette spools it), its kind told by
its content (415 for what the app does not read, or a name that lies about it), a row in the state store, then
in the background: the file parsed in a child process with time and memory limits (serve_app/files/sandbox.py),
its located sections written as one document of the API key's tenant (id: the file's name unless the upload
names one), the row set to ``processed`` or ``error``. The upload waits up to ``files.wait_s`` for that: a file
refused by then is answered with its 4xx, one still in work with status ``uploaded`` and the URL to poll."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from serve_app.calls.handles import call
from serve_app.errors import AppError, Conflict, InvalidRequest, NotFound, PayloadTooLarge, status_for
from serve_app.files.kinds import Kind, detect
from serve_app.files.sandbox import ParseLimits, parse_in_child
from serve_app.ingress.context import IngressContext
from serve_app.state.files import ERROR, PROCESSED, UPLOADED, FileStore
from serve_app.vector.limits import check_documents

logger = logging.getLogger("ray.serve")

# Background work of this replica's uploads, held so that it is not collected while it runs.
_WORK: set[asyncio.Task] = set()
# How long the vector tier may take to embed and write one file's chunks.
INGEST_TIMEOUT_S = 600.0


class Uploads:
    def __init__(self, ctx: IngressContext):
        self.ctx, self.s = ctx, ctx.settings.files

    def db(self) -> FileStore:
        store = self.ctx.file_store
        if store is None or not self.s.enabled or not self.ctx.retrieval.enabled:
            raise NotFound("file uploads are off in this deployment (they need the retrieval tier and the state "
                           "store)")
        return store

    async def upload(self, tenant: str, upload: UploadFile, document_id: str | None) -> dict[str, Any]:
        db = self.db()
        # The name as shown and stored: its last path part, printable characters only (a NUL cannot be stored).
        name = "".join(ch for ch in Path(upload.filename or "").name if ch.isprintable())[:256] or "upload"
        if document_id is not None and not document_id.isprintable():
            raise InvalidRequest("document_id must be printable text", "document_id")
        if upload.size is not None and upload.size > self.s.max_bytes:
            raise PayloadTooLarge(f"{name} is {upload.size} bytes; files may have at most {self.s.max_bytes} "
                                  "(files.max_bytes)", "file")
        # The spooled upload goes when the request ends; the background work needs the file longer.
        folder = Path(tempfile.mkdtemp(prefix="serve-app-upload-"))
        path = folder / "file"
        try:
            await asyncio.to_thread(_copy, upload, path)
            kind = await asyncio.to_thread(detect, path, name)
            file_id = f"file-{uuid.uuid4().hex[:24]}"
            row = await asyncio.to_thread(db.add, tenant, file_id, name, path.stat().st_size, kind,
                                          document_id or name)
        except BaseException:  # refused, the store not answering, or the client gone: the copy goes
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # From here the background work owns the copy (and removes it).
        task = asyncio.get_running_loop().create_task(self._process(db, tenant, row, path, kind))
        _WORK.add(task)
        task.add_done_callback(_settled)
        done, _ = await asyncio.wait({task}, timeout=self.s.wait_s)
        if done and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # the file's 4xx (or the tier's failure)
        return await self.get(tenant, file_id)

    async def _process(self, db: FileStore, tenant: str, row: dict[str, Any], path: Path, kind: Kind) -> None:
        s = self.s
        limits = ParseLimits(s.parse_timeout_s, s.parse_memory_mb << 20, s.max_expanded_mb << 20,
                             self.ctx.settings.vector.max_document_chars)
        try:
            sections = await parse_in_child(path, row["filename"], kind, limits)
            doc = {"id": row["document_id"], "text": "\n\n".join(x["text"] for x in sections),
                   "metadata": {"source": row["filename"], "kind": kind}, "sections": sections}
            check_documents([doc], self.ctx.settings.vector)
            vector = self.ctx.retrieval.vector
            [written] = await call(vector, "ingest", [doc], tenant=tenant, timeout_s=INGEST_TIMEOUT_S)
            await asyncio.to_thread(db.finish, row["id"], PROCESSED, {
                "chunks": written["chunks"], "unchanged": written["unchanged"], "version": written["version"]})
        except Exception as exc:  # cancelled (the replica stopping): the row reads as interrupted later
            known = isinstance(exc, AppError)
            error = {"status": status_for(exc) if known else 500,
                     "message": exc.message if isinstance(exc, AppError) else
                     f"the file could not be written ({type(exc).__name__})"}
            try:
                await asyncio.to_thread(db.finish, row["id"], ERROR, {"error": error})
            except Exception:  # the store gone too: the row reads as interrupted later
                logger.exception("file %s: its status could not be written", row["id"])
            raise
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    async def get(self, tenant: str, file_id: str) -> dict[str, Any]:
        found = await asyncio.to_thread(self.db().get, tenant, file_id)
        if found is None:
            raise NotFound(f"No file found with id '{file_id[:64]}'.")
        return self._shown(found)

    async def list(self, tenant: str, limit: int) -> dict[str, Any]:
        rows = await asyncio.to_thread(self.db().list, tenant, limit + 1)
        return {"object": "list", "data": [self._shown(r) for r in rows[:limit]], "has_more": len(rows) > limit}

    async def delete(self, tenant: str, file_id: str) -> dict[str, Any]:
        """The file's entry, and the document it became while it still holds this file's content (not when a
        later upload or a POST /v1/documents has replaced it since)."""
        found = await self.get(tenant, file_id)
        if found["status"] == UPLOADED:
            raise Conflict(f"the file {file_id} is still being read and written: delete it once its status is "
                           "processed or error")
        if found["status"] == PROCESSED:
            try:
                await self.ctx.retrieval.call("delete_document", found["document_id"], tenant=tenant,
                                              version=found.get("version"))
            except NotFound:
                pass  # deleted, or replaced by other content, since
        await asyncio.to_thread(self.db().delete, tenant, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def _shown(self, row: dict[str, Any]) -> dict[str, Any]:
        """A file as the API shows it: with its status URL, OpenAI's ``status_details`` for an error, and one
        whose upload outlived the replica that took it (never finished) as an error to upload again."""
        out = {**row, "status_url": f"/v1/files/{row['id']}"}
        stale_after = self.s.parse_timeout_s + INGEST_TIMEOUT_S + 60
        if out["status"] == UPLOADED and time.time() - row["created_at"] > stale_after:
            out["status"] = ERROR
            out["error"] = {"status": 500, "message": "the upload was interrupted (its replica stopped): upload "
                                                      "the file again"}
        if out["status"] == ERROR:
            out["status_details"] = out["error"]["message"]
        return out


def _settled(task: asyncio.Task) -> None:
    """A finished upload's work: released, and its failure (written to the file's entry, and answered when the
    upload was still waiting) read, so that asyncio does not report it as never retrieved."""
    _WORK.discard(task)
    if not task.cancelled():
        task.exception()


def _copy(upload: UploadFile, path: Path) -> None:
    upload.file.seek(0)
    with path.open("wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
