"""The vector-store interface. Every backend (embedded or remote) implements it and passes the same
congruence tests (tests/unit/test_store_congruence.py).

Layout: a document is its chunks (one point each, with a vector, in the collection) plus one *record* (its
metadata and chunk count, in a second collection ``<collection>_documents``, without a vector). Metadata is
stored once, in the record, never in the chunks: a chunk's payload is its tenant, document id, version,
position and text. Backends implement the primitives on chunks and on records; how a document is written,
deleted and searched (filters are resolved against the records, then the chunks are searched by document id)
is written once, here.

Tenants: every chunk and record carries its tenant (the API key's, serve_app/protocol/keys.py; "" while keys are
off), indexed with Qdrant's ``is_tenant`` so each tenant's points are stored together, and every primitive
takes the tenant and puts it in the store query itself: a search's top-k is the tenant's own top-k, never
another tenant's hits filtered away afterwards. One collection holds every tenant (Qdrant's guidance for
multitenancy); keyword (BM25) statistics are therefore shared (docs/architecture.md says what they reveal).

Versions: a document's chunks carry the version they were written as (a hash of the document's content,
computed by the caller; chunk ids derive from tenant, document id, version and position). Its record names the
live version and the versions no read may see (``hidden``). Replacing a document writes the new version's
chunks while the record hides them, then switches the record (one point write: the new version live, the old
one hidden), then deletes the old chunks: a search during a replacement sees the old chunks or the new ones,
never a mix and never neither. The same content again (same version) writes nothing.

Each chunk has two vectors: the dense one of the embedder (unnamed, cosine) and the BM25 keyword vector of its
text (sparse, named ``SPARSE_NAME``, IDF applied by Qdrant at query time; serve_app/vector/keywords.py). A chunk
whose text is only stop words has no keyword vector at all (rather than an empty one), so it does not count in
the IDF statistics of any backend. A search is dense, keyword, or hybrid: one Qdrant query with a dense and a
keyword prefetch fused by reciprocal rank (RRF)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from serve_app.errors import Conflict, InvalidRequest
from serve_app.protocol.retrieval import SearchMode
from serve_app.vector.chunker import chunk_id
from serve_app.vector.ids import content_version, record_id  # noqa: F401 - record_id re-exported
from serve_app.vector.keywords import KeywordEncoder, Sparse

SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)
# The keyword vector's name in every backend; the dense vector stays unnamed ("").
SPARSE_NAME = "bm25"
# k of reciprocal rank fusion, score = sum of 1 / (k + rank), rank from 0. 60 is the value of the RRF paper
# (Cormack et al.) and of Elasticsearch and OpenSearch; Qdrant's own default, 2, lets the first hit of one
# list outrank a chunk both lists place high. Set explicitly so every backend fuses alike.
RRF_K = 60
# The version of chunks and records written before versions existed (given when the store opens).
LEGACY_VERSION = "legacy"
# Payload indexes. ``tenant`` is Qdrant's tenant index (points of one tenant stored together); a record's
# ``hidden`` is not empty while its document is in the middle of a write: every search reads those first.
CHUNK_INDEXES = {"tenant": "tenant", "document_id": "keyword", "version": "keyword", "position": "integer"}
RECORD_INDEXES = {"tenant": "tenant", "document_id": "keyword", "hidden": "keyword"}

def records_name(collection: str) -> str:
    """The records' collection (or Edge shard folder) next to a chunks' collection."""
    return f"{collection}_documents"


@dataclass
class StoredChunk:
    id: str
    document_id: str
    position: int
    text: str
    tenant: str = ""
    version: str = ""
    # Where in its file the chunk is: a PDF's page, the heading path of HTML, Word and Markdown (None: unknown).
    page: int | None = None
    section: str | None = None
    # Read side only: search fills in the document's metadata from its record. Never written with the chunk.
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None


@dataclass
class DocumentRecord:
    document_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    chunks: int = 0
    tenant: str = ""
    # The version reads and searches see ("": none yet, a first write under way), and the versions of this
    # document's chunks that no search may see (a write or delete under way, or cut short).
    version: str = ""
    hidden: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return bool(self.version) and self.version not in self.hidden


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
        tenant=p.get("tenant", ""),
        version=p.get("version", ""),
        page=p.get("page"),
        section=p.get("section"),
        score=score,
    )


def chunk_payload(c: StoredChunk) -> dict[str, Any]:
    out = {"tenant": c.tenant, "document_id": c.document_id, "version": c.version, "position": c.position,
           "text": c.text}
    # A location only where the document has one (files), so a plain document's chunks carry no empty keys.
    out.update({k: v for k, v in (("page", c.page), ("section", c.section)) if v is not None})
    return out


def record_from_payload(payload: dict[str, Any] | None) -> DocumentRecord:
    p = payload or {}
    return DocumentRecord(p.get("document_id", ""), p.get("metadata") or {}, int(p.get("chunks", 0)),
                          p.get("tenant", ""), p.get("version", ""), list(p.get("hidden") or []))


def record_payload(r: DocumentRecord) -> dict[str, Any]:
    return {"tenant": r.tenant, "document_id": r.document_id, "metadata": r.metadata, "chunks": r.chunks,
            "version": r.version, "hidden": r.hidden}


class VectorStore(abc.ABC):
    """Chunks of documents with a dense and a keyword vector each, and one record per document, per tenant."""

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
    def delete_chunks(self, tenant: str, document_id: str, keep_version: str | None = None) -> None:
        """Delete the tenant's chunks of the document, but those of ``keep_version`` when given."""

    @abc.abstractmethod
    def get_chunks(self, tenant: str, document_id: str, version: str) -> list[StoredChunk]:
        """The chunks of one version of the tenant's document, in position order (empty when absent)."""

    @abc.abstractmethod
    def search_chunks(
        self,
        tenant: str,
        vector: np.ndarray | None,
        top_k: int,
        document_ids: list[str] | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
        *,
        mode: SearchMode = "dense",
        sparse: Sparse | None = None,
        candidates: int | None = None,
        hidden: dict[str, list[str]] | None = None,
    ) -> list[StoredChunk]:
        """Top-k chunks of the tenant (of the given documents only when ``document_ids`` is given; none of a
        document's versions in ``hidden``, document id -> versions), the conditions inside the query. ``mode``:
        dense: by cosine similarity to ``vector``; ``score_threshold`` and ``exact`` apply to it alone.
        keyword: by BM25 of the query's keyword vector ``sparse`` (empty: no hits; ``vector`` unused).
        hybrid: one query, the dense and the keyword top ``hybrid_candidates(top_k, candidates)`` (each
        filtered alike) fused by RRF; the score is the RRF score. An empty ``sparse`` leaves the dense
        prefetch alone in the fusion."""

    @abc.abstractmethod
    def count(self) -> int:
        """Chunks stored, every tenant's (records not counted)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- records -------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def put_record(self, record: DocumentRecord) -> None:
        """Insert or overwrite a document's record (its tenant's). Durable when it returns."""

    @abc.abstractmethod
    def delete_record(self, tenant: str, document_id: str) -> None: ...

    @abc.abstractmethod
    def get_records(self, tenant: str, document_ids: list[str]) -> dict[str, DocumentRecord]:
        """The tenant's records of these documents, by document id, in one read (absent ones left out)."""

    @abc.abstractmethod
    def find_records(self, tenant: str, filter: dict[str, Any], limit: int) -> list[str]:
        """Ids of at most ``limit`` of the tenant's documents whose metadata matches ``filter`` (equality, all
        must match)."""

    @abc.abstractmethod
    def pending_records(self, tenant: str, limit: int) -> list[DocumentRecord]:
        """The tenant's records that hide versions (writes and deletes under way or cut short): their document
        ids and hidden versions at least."""

    @abc.abstractmethod
    def list_records(self, tenant: str, limit: int, after: str | None = None) -> list[DocumentRecord]:
        """At most ``limit`` of the tenant's records in a stable order (by record id), from the one after the
        document ``after``."""

    @abc.abstractmethod
    def tenants(self) -> dict[str, int]:
        """Records per tenant, every tenant's (the admin's view)."""

    # -- documents: the same for every backend ------------------------------------------------------------

    def record(self, tenant: str, document_id: str) -> DocumentRecord | None:
        return self.get_records(tenant, [document_id]).get(document_id)

    def replace_document(
        self, document_id: str, chunks: list[StoredChunk], vectors: np.ndarray, metadata: dict[str, Any] | None = None,
        sparse: list[Sparse] | None = None, *, tenant: str = "", version: str | None = None,
    ) -> bool:
        """Make ``chunks`` and ``metadata`` the tenant's document, as ``version`` (None: ``content_version`` of
        the chunks' texts and the metadata; the module docstring says how searches see only one version). The
        chunks are written with the ids of (tenant, document, version, position). False, and nothing written,
        when that version is already the live one."""
        version = version or content_version(document_id, [c.text for c in chunks], metadata or {})
        old = self.record(tenant, document_id)
        if old is not None and old.hidden:  # a write or delete cut short: keep only the live version's chunks
            self.delete_chunks(tenant, document_id, keep_version=old.version if old.live else None)
            if old.live and old.version == version:  # and it was this version: put right, nothing to write
                old.hidden = []
                self.put_record(old)
                return False
        if old is not None and old.live and old.version == version:
            return False
        base = old if old is not None and old.live else DocumentRecord(document_id, tenant=tenant)
        # 1. The new version hidden, then written.
        self.put_record(DocumentRecord(document_id, base.metadata, base.chunks, tenant, base.version, [version]))
        stored = [StoredChunk(chunk_id(document_id, c.position, tenant, version), document_id, c.position, c.text,
                              tenant, version, c.page, c.section) for c in chunks]
        self.upsert(stored, vectors, sparse)
        # 2. The switch: one record write makes the new version live and hides the old one.
        old_versions = [base.version] if base.version else []
        switched = DocumentRecord(document_id, dict(metadata or {}), len(chunks), tenant, version, old_versions)
        self.put_record(switched)
        # 3. The old chunks go; the record stops hiding.
        if old_versions or old is not None:
            self.delete_chunks(tenant, document_id, keep_version=version)
        if switched.hidden:
            switched.hidden = []
            self.put_record(switched)
        return True

    def delete_document(self, tenant: str, document_id: str, version: str | None = None) -> int:
        """Hide every version, delete the chunks, then the record (a delete cut short leaves a record that hides
        its chunks: absent to every read, and put right by the next write or delete). The live version's
        chunk count (0: the tenant has no such document, or ``version`` is given and is not the live one: then
        nothing is deleted)."""
        old = self.record(tenant, document_id)
        if old is None or (version is not None and not (old.live and old.version == version)):
            return 0
        if old.version and old.version not in old.hidden:
            self.put_record(DocumentRecord(document_id, old.metadata, old.chunks, tenant, old.version,
                                           [*old.hidden, old.version]))
        self.delete_chunks(tenant, document_id)
        self.delete_record(tenant, document_id)
        return old.chunks if old.live else 0

    def document_chunks(self, tenant: str, document_id: str) -> tuple[DocumentRecord, list[StoredChunk]] | None:
        """The tenant's live document: its record and chunks (None when absent)."""
        record = self.record(tenant, document_id)
        if record is None or not record.live:
            return None
        return record, self.get_chunks(tenant, document_id, record.version)

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
        tenant: str = "",
    ) -> list[StoredChunk]:
        """The tenant's top-k chunks, each with its document's metadata. ``filter`` is metadata equality (all
        must match): resolved against the tenant's records to at most ``max_filter_documents`` document ids
        (more: FilterTooBroad), then the chunks of those documents are searched (``mode``, ``sparse``,
        ``candidates``: search_chunks), never a version a record hides. A keyword search whose query has only
        stop words is refused (400) rather than answered empty, so every caller tells the user why nothing
        matched."""
        self.check_mode(mode, vector, sparse)
        if score_threshold is not None and mode != "dense":
            raise InvalidRequest("score_threshold applies to dense search only", "score_threshold")
        if mode == "keyword" and not sparse:
            raise InvalidRequest("the query has only stop words: a keyword search needs at least one other word",
                                 "query")
        ids = None
        if filter:
            ids = self.find_records(tenant, filter, max_filter_documents + 1)
            if len(ids) > max_filter_documents:
                raise FilterTooBroad(
                    f"the filter matches more than {max_filter_documents} documents; narrow it with more keys",
                    "filter")
            if not ids:
                return []
        # A write that switches a document between reading its records and the query could leave the query
        # with a version already hidden and one not yet live: the records are read again after the query, and
        # the search done once more if a document's hidden versions changed meanwhile.
        hidden = self._hidden(tenant, max_filter_documents)
        for _ in range(2):
            hits = self.search_chunks(tenant, vector, top_k, ids, score_threshold, exact, mode=mode, sparse=sparse,
                                      candidates=candidates, hidden=hidden)
            now = self._hidden(tenant, max_filter_documents)
            if now == hidden:
                break
            hidden = now
        records = self.get_records(tenant, sorted({h.document_id for h in hits})) if hits else {}
        # Each hit of its document's live version only: a write concurrent with the query never shows a mix.
        live = [h for h in hits if (r := records.get(h.document_id)) is not None and r.live and h.version == r.version]
        for h in live:
            h.metadata = dict(records[h.document_id].metadata)
        return live

    def _hidden(self, tenant: str, limit: int) -> dict[str, list[str]]:
        """The versions no search may see, per document: few at any time (the documents being written)."""
        return {r.document_id: sorted(r.hidden) for r in self.pending_records(tenant, limit)}

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
