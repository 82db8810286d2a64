"""Uploaded files in the state store: each file's tenant, name, kind, the document it becomes and its status
(``uploaded`` while it is parsed and written, then ``processed`` or ``error``), so that its status URL answers
the same on every ingress replica, after the replica that took the upload is gone. Every read and write names
the tenant: another tenant's file reads as absent. Calls block (SQLAlchemy): the ingress runs them in a thread."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from serve_app.state import store
from serve_app.state.tables import files

UPLOADED, PROCESSED, ERROR = "uploaded", "processed", "error"


def _view(row) -> dict[str, Any]:
    details = json.loads(row.details)
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": int(row.created_at),
            "filename": row.filename, "purpose": "assistants", "status": row.status, "kind": row.kind,
            "document_id": row.document_id, **details}


class FileStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @store.answering
    def add(self, tenant: str, file_id: str, filename: str, size: int, kind: str, document_id: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            conn.execute(insert(files).values(id=file_id, tenant=tenant, created_at=time.time(), filename=filename,
                                              bytes=size, kind=kind, document_id=document_id, status=UPLOADED,
                                              details="{}"))
        found = self.get(tenant, file_id)
        assert found is not None
        return found

    @store.answering
    def finish(self, file_id: str, status: str, details: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(files).where(files.c.id == file_id).values(status=status, details=json.dumps(details)))

    @store.answering
    def get(self, tenant: str, file_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(files).where(files.c.id == file_id, files.c.tenant == tenant)).first()
        return _view(row) if row is not None else None

    @store.answering
    def list(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        """The tenant's files, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(files).where(files.c.tenant == tenant)
                                .order_by(files.c.created_at.desc()).limit(limit)).all()
        return [_view(r) for r in rows]

    @store.answering
    def delete(self, tenant: str, file_id: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(delete(files).where(files.c.id == file_id, files.c.tenant == tenant)).rowcount > 0
