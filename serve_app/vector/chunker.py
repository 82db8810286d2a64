"""Token-aware chunking: windows of ``chunk_tokens`` tokens overlapping by ``overlap_tokens``, cut on the
embedder's own tokenizer so a chunk never exceeds what the embedder reads. Chunk ids are derived from the
tenant, document id, version and position: the same on every machine, and a new version of a document never
overwrites the old one's chunks while searches may still see them (serve_app/vector/store.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

# Fixed namespaces: the same (tenant, document id, version, position) gives the same chunk id on every machine
# and run. Chunks written before tenants and versions (neither given) keep the ids they had.
_NAMESPACE = uuid.UUID("6f0c4a52-6a4e-4c8e-9a8e-2b1f1c0de001")
_VERSIONED = uuid.UUID("6f0c4a52-6a4e-4c8e-9a8e-2b1f1c0de004")


def chunk_id(document_id: str, position: int, tenant: str = "", version: str = "") -> str:
    if not tenant and not version:
        return str(uuid.uuid5(_NAMESPACE, f"{document_id}\x00{position}"))
    return str(uuid.uuid5(_VERSIONED, f"{tenant}\x00{version}\x00{position}\x00{document_id}"))


@dataclass
class Chunk:
    document_id: str
    position: int
    text: str
    page: int | None = None  # where in its file the chunk is (serve_app/files/parse.py)
    section: str | None = None

    @property
    def id(self) -> str:
        return chunk_id(self.document_id, self.position)


def chunk_text(
    document_id: str,
    text: str,
    tokenizer,
    chunk_tokens: int,
    overlap_tokens: int,
) -> list[Chunk]:
    """Split ``text`` with a Hugging Face fast tokenizer (character offsets map tokens back to text)."""
    if overlap_tokens >= chunk_tokens:
        raise ValueError("overlap_tokens must be smaller than chunk_tokens")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    offsets = [o for o in enc["offset_mapping"] if o[1] > o[0]]
    if not offsets:
        return [Chunk(document_id, 0, text.strip())] if text.strip() else []
    chunks: list[Chunk] = []
    step = chunk_tokens - overlap_tokens
    start = 0
    while True:
        window = offsets[start : start + chunk_tokens]
        piece = text[window[0][0] : window[-1][1]].strip()
        if piece:
            chunks.append(Chunk(document_id, len(chunks), piece))
        if start + chunk_tokens >= len(offsets):
            break
        start += step
    return chunks


def chunk_sections(document_id: str, sections: list[dict], tokenizer, chunk_tokens: int,
                   overlap_tokens: int) -> list[Chunk]:
    """Each section (``{"text", "page", "section"}``) chunked on its own, so every chunk lies on one page or
    under one heading path and says which; positions run on across sections."""
    out: list[Chunk] = []
    for s in sections:
        for c in chunk_text(document_id, s["text"], tokenizer, chunk_tokens, overlap_tokens):
            out.append(Chunk(document_id, len(out), c.text, s.get("page"), s.get("section")))
    return out
