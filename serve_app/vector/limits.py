"""What one request may write to (or ask of) the vector tier, checked in one place: the documents and search
routes, the VectorStore deployment (for every caller of its handle) and the batch-ingest job all call these,
so a document the API refuses is refused by the job too, with the same message and ``param``.

Why bounds beyond the body size: before documents had records, a document's metadata was copied into every
chunk, so one 4 MiB request (2 MB of metadata, 2 MB of text) wrote gigabytes. Metadata is now stored once
per document, and these bounds keep even that once small; the chunk budget bounds the embedder's work and
the points one request writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from serve_app.config.settings import VectorSettings
from serve_app.errors import InvalidRequest, PayloadTooLarge


def metadata_bytes(metadata: dict[str, Any]) -> int:
    """Size of ``metadata`` as compact JSON in UTF-8: what its record stores."""
    return len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())


def check_metadata(metadata: dict[str, Any], s: VectorSettings, param: str) -> None:
    """Key count, string value length and total size of one document's metadata (or of a filter)."""
    if len(metadata) > s.max_metadata_keys:
        raise InvalidRequest(f"{param} has {len(metadata)} keys; at most {s.max_metadata_keys} are allowed", param)
    for key, value in metadata.items():
        if isinstance(value, str) and len(value) > s.max_metadata_value_chars:
            raise InvalidRequest(
                f"{param}.{key} is {len(value)} characters long; at most {s.max_metadata_value_chars} are allowed",
                f"{param}.{key}",
            )
    size = metadata_bytes(metadata)
    if size > s.max_metadata_bytes:
        raise InvalidRequest(f"{param} is {size} bytes as JSON; at most {s.max_metadata_bytes} are allowed", param)


def check_filter(filter_: dict[str, Any] | None, s: VectorSettings, param: str = "filter") -> None:
    """A search filter matches metadata, so it has metadata's bounds (a longer value could match nothing)."""
    if filter_:
        check_metadata(filter_, s, param)


def check_document(doc: dict[str, Any], s: VectorSettings, param: str) -> None:
    """One document (a ``Document`` model dumped to a dict): its text length and its metadata."""
    if len(doc["text"]) > s.max_document_chars:
        raise PayloadTooLarge(f"{param}.text is longer than {s.max_document_chars} characters", f"{param}.text")
    check_metadata(doc.get("metadata") or {}, s, f"{param}.metadata")


def check_documents(docs: Sequence[dict[str, Any]], s: VectorSettings) -> None:
    """An ingest request as a whole, before anything is written: a bad document refuses all of it."""
    if len(docs) > s.max_documents_per_request:
        raise InvalidRequest(f"at most {s.max_documents_per_request} documents per request", "documents")
    seen = set()
    for i, d in enumerate(docs):
        check_document(d, s, f"documents.{i}")
        if d["id"] in seen:
            raise InvalidRequest(f"document id {d['id']!r} appears twice", f"documents.{i}.id")
        seen.add(d["id"])


def check_write_budget(chunk_counts: Sequence[int], s: VectorSettings) -> None:
    """The chunks an ingest request's documents were cut into (one count per document), against the budget.
    Checked after chunking and before embedding: nothing has been written when it refuses."""
    total, limit = sum(chunk_counts), s.max_ingest_chunks_per_request
    if total <= limit:
        return
    i = max(range(len(chunk_counts)), key=chunk_counts.__getitem__)
    if chunk_counts[i] > limit:
        raise PayloadTooLarge(
            f"documents.{i} would be stored as {chunk_counts[i]} chunks; at most {limit} chunks per request: "
            "split the document", f"documents.{i}.text")
    raise PayloadTooLarge(
        f"the documents would be stored as {total} chunks; at most {limit} chunks per request: send fewer "
        "documents per request", "documents")
