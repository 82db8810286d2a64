"""A stored document as GET /v1/documents/{id} answers it: its text rebuilt from its overlapping chunks, its
metadata (from its record) and its chunks. Pure functions: the VectorStore deployment runs them in a worker
thread, since rebuilding a long document is CPU work that must not hold the replica's event loop."""

from __future__ import annotations

from typing import Any

from serve_app.vector.store import DocumentRecord, StoredChunk


def document_view(document_id: str, chunks: list[StoredChunk], metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": document_id,
        "text": rejoin([c.text for c in chunks]),
        "metadata": metadata,
        "chunks": [{"chunk_id": c.id, "position": c.position, "text": c.text,
                    **{k: v for k, v in (("page", c.page), ("section", c.section)) if v is not None}}
                   for c in chunks],
    }


def document_entry(r: DocumentRecord) -> dict[str, Any]:
    """A document as GET /v1/documents lists it: no text (reading it is GET /v1/documents/{id})."""
    return {"id": r.document_id, "object": "document", "metadata": r.metadata, "chunks": r.chunks}


def rejoin(texts: list[str]) -> str:
    """Chunks overlap: keep each chunk's part that the text so far does not already end with (the longest
    prefix of the chunk that is a suffix of the text); chunks that do not overlap are joined by a space."""
    parts: list[str] = []
    tail = ""  # the end of the text so far, as long as the longest chunk: where an overlap can be
    width = max(map(len, texts), default=0)
    for t in texts:
        k = _overlap(tail, t)
        piece = t[k:] if k else ((" " if parts else "") + t)
        parts.append(piece)
        tail = (tail + piece)[-width:]
    return "".join(parts)


def _overlap(tail: str, t: str) -> int:
    """Length of the longest prefix of ``t`` that ``tail`` ends with. Candidates are where ``t``'s first
    character occurs in the last len(t) characters of ``tail``, leftmost (longest) first, so the work is a
    few C-level comparisons per chunk instead of one per possible length."""
    if not tail or not t:
        return 0
    window = tail[-len(t):]
    j = window.find(t[0])
    while j != -1:
        if t.startswith(window[j:]):
            return len(window) - j
        j = window.find(t[0], j + 1)
    return 0
