"""The vector-store interface. Every backend (embedded or remote) implements it and passes the same
congruence tests (tests/unit/test_store_congruence.py)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StoredChunk:
    id: str
    document_id: str
    position: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None


def chunk_from_point(point_id: Any, payload: dict[str, Any] | None, score: float | None = None) -> StoredChunk:
    """A stored chunk from a Qdrant point's id and payload (the layout every Qdrant backend writes)."""
    p = payload or {}
    return StoredChunk(
        id=str(point_id),
        document_id=p.get("document_id", ""),
        position=int(p.get("position", 0)),
        text=p.get("text", ""),
        metadata=p.get("metadata") or {},
        score=score,
    )


def chunk_payload(c: StoredChunk) -> dict[str, Any]:
    return {"document_id": c.document_id, "position": c.position, "text": c.text, "metadata": c.metadata}


class VectorStore(abc.ABC):
    """Chunks of documents with one dense vector each, cosine similarity."""

    @abc.abstractmethod
    def upsert(self, chunks: list[StoredChunk], vectors: np.ndarray) -> None:
        """Insert or overwrite chunks by id. Durable when it returns."""

    @abc.abstractmethod
    def delete_chunks(self, document_id: str, from_position: int = 0) -> None:
        """Delete a document's chunks whose position is at least ``from_position``."""

    @abc.abstractmethod
    def get_chunks(self, document_id: str) -> list[StoredChunk]:
        """A document's chunks in position order (empty when absent)."""

    @abc.abstractmethod
    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[StoredChunk]:
        """Top-k chunks by cosine similarity; ``filter`` is metadata equality (all must match)."""

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def replace_document(self, document_id: str, chunks: list[StoredChunk], vectors: np.ndarray) -> None:
        """Make ``chunks`` the document's whole content: overwrite positions 0..n-1 (ids are derived from
        position, so this never duplicates), then drop positions >= n left from a longer older version."""
        self.upsert(chunks, vectors)
        self.delete_chunks(document_id, from_position=len(chunks))
