"""Vector store on qdrant-client: a Qdrant server or cluster by URL (``remote``), or qdrant-client's local
mode on a folder (``local``: pure Python, exact search, SQLite persistence). Both speak the same client API,
so one class serves both. Chunks live in ``collection``, document records in ``<collection>_documents``, a
collection without vectors.

A chunks collection made before keyword search (dense vector only) gets its keyword vector when the store opens:
``update_collection`` cannot add a vector (qdrant-client 1.20 refuses an unknown name, local mode and server
alike), but ``create_vector_name`` can (qdrant-client 1.20 local mode, Qdrant server 1.18 and later). The chunks
are then given the BM25 vectors of their payload texts (``update_vectors``: the dense vectors stay). That backfill
takes only chunks still without one and writes only to chunks still without one, so it resumes after a crash,
and on a server that several replicas open at once it never overwrites a newer write. A server that cannot
add the vector (older than 1.18) keeps the collection dense-only: ``keywords`` is False, and keyword or hybrid
searches answer NoKeywordIndex (409: re-ingest into a new collection).

Chunks and records made before tenants and versions are given the keyless tenant and the legacy version when
the store opens (one filtered payload write each, repeated harmlessly), and the collections the payload indexes
they lack (``tenant`` with Qdrant's ``is_tenant``)."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import numpy as np

from serve_app.vector.keywords import KeywordEncoder, Sparse
from serve_app.vector.store import (
    CHUNK_INDEXES,
    LEGACY_VERSION,
    RECORD_INDEXES,
    RRF_K,
    SPARSE_NAME,
    DocumentRecord,
    StoredChunk,
    VectorStore,
    chunk_from_point,
    chunk_payload,
    hybrid_candidates,
    record_from_payload,
    record_id,
    record_payload,
    records_name,
)

logger = logging.getLogger("ray.serve")

_PAGE = 256  # chunks per scroll page and per write of the keyword backfill


def _payload_filter(models, tenant: str, document_id: str | None = None, metadata: dict[str, Any] | None = None,
                    document_ids: list[str] | None = None, version: str | None = None,
                    not_version: str | None = None, hidden: dict[str, list[str]] | None = None,
                    pending: bool = False):
    """The tenant's points matching the other conditions: the tenant is always the first condition."""
    must = [models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
    must_not = []
    if document_id is not None:
        must.append(models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id)))
    if document_ids is not None:
        must.append(models.FieldCondition(key="document_id", match=models.MatchAny(any=list(document_ids))))
    if version is not None:
        must.append(models.FieldCondition(key="version", match=models.MatchValue(value=version)))
    if not_version is not None:
        must_not.append(models.FieldCondition(key="version", match=models.MatchValue(value=not_version)))
    for doc, versions in (hidden or {}).items():  # a document's hidden versions, that document's only
        must_not.append(models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=doc)),
                                            models.FieldCondition(key="version", match=models.MatchAny(any=versions))]))
    if pending:  # records that hide versions
        must_not.append(models.IsEmptyCondition(is_empty=models.PayloadField(key="hidden")))
    for key, value in (metadata or {}).items():
        if isinstance(value, float):
            # Exact match is for keywords, integers and booleans: a float is matched as the one-point range.
            must.append(models.FieldCondition(key=f"metadata.{key}", range=models.Range(gte=value, lte=value)))
        else:
            must.append(models.FieldCondition(key=f"metadata.{key}", match=models.MatchValue(value=value)))
    return models.Filter(must=must, must_not=must_not or None)


class QdrantClientStore(VectorStore):
    def __init__(
        self,
        collection: str,
        dim: int,
        *,
        path: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        keywords: KeywordEncoder | None = None,
    ):
        from qdrant_client import QdrantClient, models

        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (local mode) or url (server)")
        self._m = models
        self.collection = collection
        self.encoder = keywords or KeywordEncoder()
        # Local mode is in-process Python state plus SQLite: one call at a time. A server client is
        # thread-safe and needs no lock.
        self._local = path is not None
        self._lock = threading.RLock() if self._local else contextlib.nullcontext()
        if path == ":memory:":  # no persistence: benchmarks and throwaway collections
            self._client = QdrantClient(location=":memory:")
        elif path is not None:
            self._client = QdrantClient(path=path)
        else:
            self._client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout_s))
        self.records = records_name(collection)
        # Keyword vectors: IDF applied by Qdrant at query time, from the collection's live statistics.
        self._create(collection, models.VectorParams(size=dim, distance=models.Distance.COSINE),
                     {SPARSE_NAME: models.SparseVectorParams(modifier=models.Modifier.IDF)})
        self._keywords = self._add_keywords()
        # Records carry no vector: a collection without any (Qdrant takes it; points then have vector={}).
        self._create(self.records, {})
        self._adopt_legacy(collection, CHUNK_INDEXES, {"tenant": "", "version": LEGACY_VERSION})
        self._adopt_legacy(self.records, RECORD_INDEXES,
                           {"tenant": "", "version": LEGACY_VERSION, "hidden": []})

    def _create(self, name: str, vectors_config, sparse_config=None) -> None:
        if not self._client.collection_exists(name):
            self._client.create_collection(name, vectors_config=vectors_config, sparse_vectors_config=sparse_config)

    def _adopt_legacy(self, name: str, indexes: dict[str, str], fields: dict[str, Any]) -> None:
        """The payload indexes the collection lacks (none in local mode, which has no payload indexes), and
        ``fields`` on the points written before tenants (module docstring)."""
        m = self._m
        if not self._local:
            have = set(self._client.get_collection(name).payload_schema or {})
            schema = {"tenant": m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, is_tenant=True),
                      "keyword": m.PayloadSchemaType.KEYWORD, "integer": m.PayloadSchemaType.INTEGER}
            for key, kind in indexes.items():
                if key not in have:  # idempotent on the server: replicas opening together all succeed
                    self._client.create_payload_index(name, key, schema[kind], wait=True)
        legacy = m.Filter(must=[m.IsEmptyCondition(is_empty=m.PayloadField(key="tenant"))])
        with self._lock:
            if self._client.count(name, count_filter=legacy, exact=True).count:
                self._client.set_payload(name, fields, points=m.FilterSelector(filter=legacy), wait=True)

    def _add_keywords(self) -> bool:
        """Give an old-layout chunks collection its keyword vector and backfill it (module docstring)."""
        m = self._m
        with self._lock:
            sparse = self._client.get_collection(self.collection).config.params.sparse_vectors or {}
            if SPARSE_NAME not in sparse:
                try:
                    # Idempotent on the server and in local mode: replicas opening together all succeed.
                    self._client.create_vector_name(self.collection, SPARSE_NAME, m.SparseVectorNameConfig(
                        sparse=m.SparseVectorConfig(modifier=m.Modifier.IDF)))
                except Exception as e:  # noqa: BLE001 - a server without the endpoint (older than 1.18): stay dense-only
                    logger.warning("vector store: cannot add keyword vectors to %s (%s): keyword and hybrid "
                                   "search refused until its documents are re-ingested into a new collection",
                                   self.collection, e)
                    return False
            self._backfill()
        return True

    def _backfill(self) -> None:
        """BM25 vectors for the chunks without one. Chunks whose text is only stop words stay without one and
        are read again at every open: few, and cheaper than remembering them."""
        from qdrant_client.http.exceptions import UnexpectedResponse

        m = self._m
        missing = m.Filter(must_not=[m.HasVectorCondition(has_vector=SPARSE_NAME)])
        offset, written = None, 0
        while True:
            points, offset = self._client.scroll(self.collection, scroll_filter=missing, limit=_PAGE, offset=offset,
                                                 with_payload=["text"])
            sparse = self.encoder.documents([(p.payload or {}).get("text", "") for p in points])
            updates = [m.PointVectors(id=p.id, vector={SPARSE_NAME: self._sparse(kw)})
                       for p, kw in zip(points, sparse, strict=True) if kw]
            if updates:
                try:
                    # update_filter: a chunk rewritten meanwhile (with its own keyword vector) is left alone.
                    self._client.update_vectors(self.collection, updates, wait=True, update_filter=missing)
                except (KeyError, UnexpectedResponse) as e:
                    # A chunk deleted since the scroll: the others of the page are written all the same.
                    if isinstance(e, UnexpectedResponse) and e.status_code != 404:
                        raise
                written += len(updates)
            if offset is None:
                break
        if written:
            logger.warning("vector store: keyword vectors added to %d chunks of %s", written, self.collection)

    @property
    def keywords(self) -> bool:
        return self._keywords

    def name(self) -> str:
        return self.collection

    def _sparse(self, s: Sparse):
        return self._m.SparseVector(indices=s.indices, values=s.values)

    def upsert(self, chunks: list[StoredChunk], vectors: np.ndarray, sparse: list[Sparse] | None = None) -> None:
        if not chunks:
            return
        # Dense-only when the collection has no keyword vector (a server that could not add it).
        keywords = self.sparse_of(chunks, sparse) if self._keywords else [None] * len(chunks)
        points = []
        for c, v, kw in zip(chunks, vectors, keywords, strict=True):
            vector = {"": np.asarray(v, dtype=np.float32).tolist()}
            if kw:  # only stop words: no keyword vector (store.py's docstring says why)
                vector[SPARSE_NAME] = self._sparse(kw)
            points.append(self._m.PointStruct(id=c.id, vector=vector, payload=chunk_payload(c)))
        # wait=True: acknowledged only once the server (or local SQLite) has applied the write.
        with self._lock:
            self._client.upsert(self.collection, points=points, wait=True)

    def delete_chunks(self, tenant: str, document_id: str, keep_version: str | None = None) -> None:
        flt = _payload_filter(self._m, tenant, document_id=document_id, not_version=keep_version)
        with self._lock:
            self._client.delete(self.collection, points_selector=self._m.FilterSelector(filter=flt), wait=True)

    def get_chunks(self, tenant: str, document_id: str, version: str) -> list[StoredChunk]:
        flt = _payload_filter(self._m, tenant, document_id=document_id, version=version)
        out: list[StoredChunk] = []
        offset = None
        while True:
            with self._lock:
                points, offset = self._client.scroll(self.collection, scroll_filter=flt, limit=256, offset=offset, with_payload=True)
            out.extend(chunk_from_point(p.id, p.payload) for p in points)
            if offset is None:
                break
        return sorted(out, key=lambda c: c.position)

    def search_chunks(self, tenant, vector, top_k, document_ids=None, score_threshold=None, exact=False, *,
                      mode="dense", sparse=None, candidates=None, hidden=None) -> list[StoredChunk]:
        m = self._m
        self.check_mode(mode, vector, sparse)
        flt = _payload_filter(m, tenant, document_ids=document_ids, hidden=hidden)
        # Local mode is always exact.
        params = m.SearchParams(exact=True) if exact and not self._local else None
        dense = np.asarray(vector, dtype=np.float32).tolist() if vector is not None else None
        if mode == "keyword":
            if not sparse:
                return []
            query = dict(query=self._sparse(sparse), using=SPARSE_NAME, query_filter=flt)
        elif mode == "hybrid":
            n = hybrid_candidates(top_k, candidates)
            # The filter goes on each prefetch: the fusion only ranks what the prefetches bring.
            prefetch = [m.Prefetch(query=dense, limit=n, filter=flt, params=params)]
            if sparse:
                prefetch.append(m.Prefetch(query=self._sparse(sparse), using=SPARSE_NAME, limit=n, filter=flt))
            query = dict(prefetch=prefetch, query=m.RrfQuery(rrf=m.Rrf(k=RRF_K)))
        else:
            query = dict(query=dense, query_filter=flt, score_threshold=score_threshold, search_params=params)
        with self._lock:
            res = self._client.query_points(self.collection, limit=top_k, with_payload=True, **query)
        return [chunk_from_point(p.id, p.payload, p.score) for p in res.points]

    def put_record(self, record: DocumentRecord) -> None:
        point = self._m.PointStruct(id=record_id(record.document_id, record.tenant), vector={},
                                    payload=record_payload(record))
        with self._lock:
            self._client.upsert(self.records, points=[point], wait=True)

    def delete_record(self, tenant: str, document_id: str) -> None:
        selector = self._m.PointIdsList(points=[record_id(document_id, tenant)])
        with self._lock:
            self._client.delete(self.records, points_selector=selector, wait=True)

    def get_records(self, tenant: str, document_ids: list[str]) -> dict[str, DocumentRecord]:
        if not document_ids:
            return {}
        with self._lock:
            points = self._client.retrieve(self.records, [record_id(d, tenant) for d in document_ids],
                                           with_payload=True)
        records = (record_from_payload(p.payload) for p in points)
        # Ids derive from the tenant already; the payload's tenant is checked all the same.
        return {r.document_id: r for r in records if r.tenant == tenant}

    def _scroll_records(self, flt, limit: int, offset=None, payload: Any = True) -> list[DocumentRecord]:
        with self._lock:
            points, _ = self._client.scroll(self.records, scroll_filter=flt, limit=limit, offset=offset,
                                            with_payload=payload)
        return [record_from_payload(p.payload) for p in points]

    def find_records(self, tenant: str, filter: dict[str, Any], limit: int) -> list[str]:
        flt = _payload_filter(self._m, tenant, metadata=filter)
        return [r.document_id for r in self._scroll_records(flt, limit, payload=["document_id"])]

    def pending_records(self, tenant: str, limit: int) -> list[DocumentRecord]:
        return self._scroll_records(_payload_filter(self._m, tenant, pending=True), limit,
                                    payload=["document_id", "hidden", "tenant"])

    def list_records(self, tenant: str, limit: int, after: str | None = None) -> list[DocumentRecord]:
        # Scroll pages start at a point id (inclusive): from the record of ``after``, which is then dropped.
        start = record_id(after, tenant) if after is not None else None
        records = self._scroll_records(_payload_filter(self._m, tenant), limit + 1, offset=start)
        return [r for r in records if r.document_id != after][:limit]

    def tenants(self) -> dict[str, int]:
        with self._lock:
            hits = self._client.facet(self.records, "tenant", limit=1_000_000, exact=True).hits
        return {str(h.value): int(h.count) for h in hits}

    def count(self) -> int:
        with self._lock:
            return self._client.count(self.collection, exact=True).count

    def close(self) -> None:
        with self._lock:
            self._client.close()
