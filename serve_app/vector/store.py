"""The vector-store interface. Every backend (embedded or remote) implements it and passes the same
congruence tests (tests/unit/test_store_congruence.py).

Layout: a document is its chunks (one point each, with a vector, in the collection) plus one *record* (its
metadata and chunk count, in a second collection ``<collection>_documents``, without a vector). Metadata is
stored once, in the record, never in the chunks: a chunk's payload is its document id, position and text.
Backends implement the primitives on chunks and on records; how a document is written, deleted and
searched (filters are resolved against the records, then the chunks are searched by document id) is
written once, here.

Each chunk has two vectors: the dense one of the embedder (unnamed, cosine) and the BM25 keyword vector of its
text (sparse, named ``SPARSE_NAME``, IDF applied by Qdrant at query time; serve_app/vector/keywords.py). A chunk
whose text is only stop words has no keyword vector at all (rather than an empty one), so it does not count in
the IDF statistics of any backend. A search is dense, keyword, or hybrid: one Qdrant query with a dense and a
keyword prefetch fused by reciprocal rank (RRF)."""

from __future__ import annotations

import abc
import uuid
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from serve_app.errors import Conflict, InvalidRequest
from serve_app.protocol.retrieval import SearchMode
from serve_app.vector.keywords import KeywordEncoder, Sparse

SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)
# The keyword vector's name in every backend; the dense vector stays unnamed ("").
SPARSE_NAME = "bm25"
# k of reciprocal rank fusion, score = sum of 1 / (k + rank), rank from 0. 60 is the value of the RRF paper
# (Cormack et al.) and of Elasticsearch and OpenSearch; Qdrant's own default, 2, lets the first hit of one
# list outrank a chunk both lists place high. Set explicitly so every backend fuses alike.
RRF_K = 60

# Fixed namespace of record ids: the same document id gives the same record id on every machine and run, so
# writing a document's record again overwrites it.
_RECORDS = uuid.UUID("6f0c4a52-6a4e-4c8e-9a8e-2b1f1c0de002")


def record_id(document_id: str) -> str:
    return str(uuid.uuid5(_RECORDS, document_id))


def records_name(collection: str) -> str:
    """The records' collection (or Edge shard folder) next to a chunks' collection."""
    return f"{collection}_documents"


@dataclass
class StoredChunk:
    id: str
    document_id: str
    position: int
    text: str
    # Read side only: search fills in the document's metadata from its record. Never written with the chunk.
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None


@dataclass
class DocumentRecord:
    document_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    chunks: int = 0


class FilterTooBroad(InvalidRequest):
    """A search filter matches more documents than a search restricts itself to (400)."""


class NoKeywordIndex(Conflict):
    """Keyword or hybrid search on a collection without keyword vectors (409). Built by ``of``: the
    constructor stays AppError's (message, param), which is what unpickling calls."""

    @classmethod
    def of(cls, collection: str) -> NoKeywordIndex:
        return cls(f"the collection {collection!r} has no keyword index (it was created before keyword search "
                   "and the vector backend cannot add one): re-ingest its documents into a new collection, or "
                   "search with mode 'dense'", "mode")


def hybrid_candidates(top_k: int, candidates: int | None) -> int:
    """Length of each prefetch of a hybrid search: never fewer than top_k, so the fusion can fill the page."""
    return max(top_k, candidates if candidates else max(4 * top_k, 20))


def chunk_from_point(point_id: Any, payload: dict[str, Any] | None, score: float | None = None) -> StoredChunk:
    """A stored chunk from a Qdrant point's id and payload (the layout every Qdrant backend writes)."""
    p = payload or {}
    return StoredChunk(
        id=str(point_id),
        document_id=p.get("document_id", ""),
        position=int(p.get("position", 0)),
        text=p.get("text", ""),
        score=score,
    )


def chunk_payload(c: StoredChunk) -> dict[str, Any]:
    return {"document_id": c.document_id, "position": c.position, "text": c.text}


def record_from_payload(payload: dict[str, Any] | None) -> DocumentRecord:
    p = payload or {}
    return DocumentRecord(p.get("document_id", ""), p.get("metadata") or {}, int(p.get("chunks", 0)))


def record_payload(r: DocumentRecord) -> dict[str, Any]:
    return {"document_id": r.document_id, "metadata": r.metadata, "chunks": r.chunks}


class VectorStore(abc.ABC):
    """Chunks of documents with a dense and a keyword vector each, and one record per document."""

    # Computes the keyword vectors of writes that bring none (backends set it in their constructor; pass the
    # deployment's own encoder so both use one configuration).
    encoder: KeywordEncoder

    # -- chunks --------------------------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def keywords(self) -> bool:
        """The collection has keyword vectors (False: a collection the backend could not give them to)."""

    @abc.abstractmethod
    def upsert(self, chunks: list[StoredChunk], vectors: np.ndarray, sparse: list[Sparse] | None = None) -> None:
        """Insert or overwrite chunks by id (their ``metadata`` is not stored), with the keyword vectors of
        their texts (``sparse``, one per chunk; None: computed here with ``encoder``). Durable when it
        returns."""

    @abc.abstractmethod
    def delete_chunks(self, document_id: str, from_position: int = 0) -> None:
        """Delete a document's chunks whose position is at least ``from_position``."""

    @abc.abstractmethod
    def get_chunks(self, document_id: str) -> list[StoredChunk]:
        """A document's chunks in position order (empty when absent)."""

    @abc.abstractmethod
    def search_chunks(
        self,
        vector: np.ndarray | None,
        top_k: int,
        document_ids: list[str] | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
        *,
        mode: SearchMode = "dense",
        sparse: Sparse | None = None,
        candidates: int | None = None,
    ) -> list[StoredChunk]:
        """Top-k chunks of the given documents only when ``document_ids`` is given. ``mode``:
        dense: by cosine similarity to ``vector``; ``score_threshold`` and ``exact`` apply to it alone.
        keyword: by BM25 of the query's keyword vector ``sparse`` (empty: no hits; ``vector`` unused).
        hybrid: one query, the dense and the keyword top ``hybrid_candidates(top_k, candidates)`` (each
        filtered by ``document_ids``) fused by RRF; the score is the RRF score. An empty ``sparse`` leaves
        the dense prefetch alone in the fusion."""

    @abc.abstractmethod
    def count(self) -> int:
        """Chunks stored (records not counted)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- records -------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def put_record(self, record: DocumentRecord) -> None:
        """Insert or overwrite a document's record. Durable when it returns."""

    @abc.abstractmethod
    def delete_record(self, document_id: str) -> None: ...

    @abc.abstractmethod
    def get_records(self, document_ids: list[str]) -> dict[str, DocumentRecord]:
        """The records of these documents, by document id, in one read (absent ones left out)."""

    @abc.abstractmethod
    def find_records(self, filter: dict[str, Any], limit: int) -> list[str]:
        """Ids of at most ``limit`` documents whose metadata matches ``filter`` (equality, all must match)."""

    # -- documents: the same for every backend ------------------------------------------------------------

    def replace_document(
        self, document_id: str, chunks: list[StoredChunk], vectors: np.ndarray, metadata: dict[str, Any] | None = None,
        sparse: list[Sparse] | None = None,
    ) -> None:
        """Make ``chunks`` and ``metadata`` the document's whole content: overwrite positions 0..n-1 (ids are
        derived from position, so this never duplicates), drop positions >= n left from a longer older
        version, then write the record. The record goes last: a write cut short leaves chunks that a filter
        does not reach yet, never a record that promises chunks not written."""
        self.upsert(chunks, vectors, sparse)
        self.delete_chunks(document_id, from_position=len(chunks))
        self.put_record(DocumentRecord(document_id, dict(metadata or {}), len(chunks)))

    def delete_document(self, document_id: str) -> None:
        """The chunks, then the record (the reverse of writing: a delete cut short leaves a record without
        chunks, which reads as absent and which the next write or delete replaces)."""
        self.delete_chunks(document_id, 0)
        self.delete_record(document_id)

    def search(
        self,
        vector: np.ndarray | None,
        top_k: int,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
        max_filter_documents: int = 10_000,
        *,
        mode: SearchMode = "dense",
        sparse: Sparse | None = None,
        candidates: int | None = None,
    ) -> list[StoredChunk]:
        """Top-k chunks, each with its document's metadata. ``filter`` is metadata equality (all must match):
        resolved against the records to at most ``max_filter_documents`` document ids (more: FilterTooBroad),
        then the chunks of those documents are searched (``mode``, ``sparse``, ``candidates``: search_chunks).
        A keyword search whose query has only stop words is refused (400) rather than answered empty, so every
        caller tells the user why nothing matched."""
        self.check_mode(mode, vector, sparse)
        if score_threshold is not None and mode != "dense":
            raise InvalidRequest("score_threshold applies to dense search only", "score_threshold")
        if mode == "keyword" and not sparse:
            raise InvalidRequest("the query has only stop words: a keyword search needs at least one other word",
                                 "query")
        ids = None
        if filter:
            ids = self.find_records(filter, max_filter_documents + 1)
            if len(ids) > max_filter_documents:
                raise FilterTooBroad(
                    f"the filter matches more than {max_filter_documents} documents; narrow it with more keys",
                    "filter")
            if not ids:
                return []
        hits = self.search_chunks(vector, top_k, ids, score_threshold, exact, mode=mode, sparse=sparse,
                                  candidates=candidates)
        records = self.get_records(sorted({h.document_id for h in hits})) if hits else {}
        for h in hits:
            record = records.get(h.document_id)
            h.metadata = dict(record.metadata) if record else {}
        return hits

    def check_mode(self, mode: SearchMode, vector: np.ndarray | None, sparse: Sparse | None) -> None:
        """Refuse a search this collection or these arguments cannot answer (search and search_chunks)."""
        if mode not in SEARCH_MODES:
            raise InvalidRequest(f"mode must be one of {', '.join(SEARCH_MODES)}", "mode")
        if mode != "dense":
            if not self.keywords:
                raise NoKeywordIndex.of(self.name())
            if sparse is None:  # a caller's bug, not the user's: the query's keyword vector was not computed
                raise ValueError("keyword and hybrid searches need the query's keyword vector (sparse)")
        if mode != "keyword" and vector is None:
            raise ValueError("dense and hybrid searches need the query's dense vector")

    def name(self) -> str:
        """The chunks' collection name, for messages."""
        return ""

    def sparse_of(self, chunks: list[StoredChunk], sparse: list[Sparse] | None) -> list[Sparse]:
        """The keyword vectors of a write: the given ones, or those of the chunks' texts."""
        if sparse is None:
            return self.encoder.documents([c.text for c in chunks])
        if len(sparse) != len(chunks):
            raise ValueError(f"{len(sparse)} keyword vectors for {len(chunks)} chunks")
        return list(sparse)
