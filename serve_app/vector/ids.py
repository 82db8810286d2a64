"""The ids of document records and the versions of documents, the same on every machine and run (chunk ids:
serve_app/vector/chunker.py)."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

# Fixed namespaces: the same ids on every machine and run, so writing a document's record again overwrites it.
# Documents of the keyless tenant ("") keep the ids they had before tenants existed.
_RECORDS = uuid.UUID("6f0c4a52-6a4e-4c8e-9a8e-2b1f1c0de002")
_TENANT_RECORDS = uuid.UUID("6f0c4a52-6a4e-4c8e-9a8e-2b1f1c0de003")


def record_id(document_id: str, tenant: str = "") -> str:
    if not tenant:
        return str(uuid.uuid5(_RECORDS, document_id))
    # Tenant names never contain NUL (protocol/keys.py's pattern): the pair maps to one string only.
    return str(uuid.uuid5(_TENANT_RECORDS, f"{tenant}\x00{document_id}"))


def content_version(document_id: str, parts: list[str], metadata: dict[str, Any]) -> str:
    """A document's version: a hash of its id (two documents with the same text never share a version, so
    hiding one hides only its own chunks), content and metadata."""
    digest = hashlib.sha256(json.dumps([document_id, parts, metadata], sort_keys=True).encode())
    return digest.hexdigest()[:24]
