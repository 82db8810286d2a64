"""Vector store on Qdrant Edge (qdrant-edge-py): the Qdrant engine in-process, with HNSW, payload indexes
and a write-ahead log. One process per storage folder (single writer). Chunks live in the shard at ``path``,
document records in a second shard next to it (``<path>_documents``). A chunks shard made before keyword search
is migrated when the store opens (serve_app/vector/edge_migration.py); chunks and records made before tenants
and versions are given the keyless tenant and the legacy version (``_adopt_legacy``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.vector import edge_migration
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

# Qdrant Edge refuses a shard without any vector, and records need none: their shard declares one named
# vector that no point carries. (Qdrant server and qdrant-client's local mode take vectorless collections.)
_NO_VECTOR = "unused"


class QdrantEdgeStore(VectorStore):
    def __init__(self, path: str | Path, dim: int, hnsw_ef: int = 128, indexing_threshold: int | None = None,
                 keywords: KeywordEncoder | None = None):
        import qdrant_edge as qe

        self._qe = qe
        self.path = Path(path)
        self.hnsw_ef = hnsw_ef
        self.encoder = keywords or KeywordEncoder()
        # Qdrant Edge calls are synchronous and the shard is single-writer: serialize access from the
        # deployment's threads.
        self._lock = threading.RLock()
        optimizers = qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold) if indexing_threshold else None
        vectors = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
        # Keyword vectors: IDF applied by the engine at query time, from the shard's live statistics.
        sparse = {SPARSE_NAME: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
        chunks = qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse, optimizers=optimizers)
        records = qe.EdgeConfig(vectors={_NO_VECTOR: qe.EdgeVectorParams(size=1, distance=qe.Distance.Dot)})
        chunk_indexes = self._indexes(CHUNK_INDEXES)
        edge_migration.recover(self.path)
        self._shard = self._open(self.path, chunks, chunk_indexes)
        if not edge_migration.has_keywords(qe, self._shard):
            edge_migration.migrate(qe, self.path, self._shard, lambda p: self._open(p, chunks, chunk_indexes),
                                   self.encoder)
            self._shard = qe.EdgeShard.load(str(self.path))
        self._records = self._open(self.path.with_name(records_name(self.path.name)), records,
                                   self._indexes(RECORD_INDEXES))
        self._adopt_legacy(self._shard, chunk_indexes, {"tenant": "", "version": LEGACY_VERSION})
        self._adopt_legacy(self._records, self._indexes(RECORD_INDEXES),
                           {"tenant": "", "version": LEGACY_VERSION, "hidden": []})

    def _indexes(self, kinds: dict[str, str]) -> dict[str, Any]:
        qe = self._qe
        schema = {"tenant": qe.KeywordIndexParams(is_tenant=True), "keyword": qe.PayloadSchemaType.Keyword,
                  "integer": qe.PayloadSchemaType.Integer}
        return {key: schema[kind] for key, kind in kinds.items()}

    def _adopt_legacy(self, shard, indexes: dict[str, Any], fields: dict[str, Any]) -> None:
        """Points written before tenants get ``fields`` (the keyless tenant, the legacy version), and the
        shard the indexes it lacks. One filtered write, repeated harmlessly at every open."""
        qe = self._qe
        have = set(shard.info().payload_schema)
        for key, kind in indexes.items():
            if key not in have:
                shard.update(qe.UpdateOperation.create_field_index(key, kind))
        legacy = qe.Filter(must=[qe.IsEmptyCondition("tenant")])
        if shard.count(qe.CountRequest(filter=legacy, exact=True)):
            shard.update(qe.UpdateOperation.set_payload_by_filter(legacy, fields))

    def _open(self, path: Path, config, indexes: dict[str, Any]):
        """The shard at ``path``, created with ``config`` and these payload indexes when the folder is new."""
        qe = self._qe
        if path.exists() and any(path.iterdir()):
            return qe.EdgeShard.load(str(path))
        shard = qe.EdgeShard.create(str(path), config)
        for key, kind in indexes.items():
            shard.update(qe.UpdateOperation.create_field_index(key, kind))
        return shard

    def _filter(self, tenant: str, document_id=None, metadata: dict[str, Any] | None = None,
                document_ids: list[str] | None = None, version: str | None = None,
                not_version: str | None = None, hidden: dict[str, list[str]] | None = None, pending: bool = False):
        """The tenant's points matching the other conditions: the tenant is always the first condition."""
        qe = self._qe
        must = [qe.FieldCondition(key="tenant", match=qe.MatchValue(tenant))]
        must_not = []
        if document_id is not None:
            must.append(qe.FieldCondition(key="document_id", match=qe.MatchValue(document_id)))
        if document_ids is not None:
            must.append(qe.FieldCondition(key="document_id", match=qe.MatchAny(list(document_ids))))
        if version is not None:
            must.append(qe.FieldCondition(key="version", match=qe.MatchValue(version)))
        if not_version is not None:
            must_not.append(qe.FieldCondition(key="version", match=qe.MatchValue(not_version)))
        for doc, versions in (hidden or {}).items():  # a document's hidden versions, that document's only
            must_not.append(qe.Filter(must=[qe.FieldCondition(key="document_id", match=qe.MatchValue(doc)),
                                            qe.FieldCondition(key="version", match=qe.MatchAny(list(versions)))]))
        if pending:  # records that hide versions
            must_not.append(qe.IsEmptyCondition("hidden"))
        for key, value in (metadata or {}).items():
            if isinstance(value, float):
                # Exact match is for keywords, integers and booleans; a number with a fraction is matched
                # as the one-point range.
                must.append(qe.FieldCondition(key=f"metadata.{key}", range=qe.RangeFloat(gte=value, lte=value)))
            else:
                must.append(qe.FieldCondition(key=f"metadata.{key}", match=qe.MatchValue(value)))
        return qe.Filter(must=must, must_not=must_not or None)

    @property
    def keywords(self) -> bool:
        return True  # an old-layout shard is migrated when it opens

    def name(self) -> str:
        return self.path.name

    def _sparse(self, s: Sparse):
        return self._qe.SparseVector(s.indices, s.values)

    def upsert(self, chunks: list[StoredChunk], vectors: np.ndarray, sparse: list[Sparse] | None = None) -> None:
        if not chunks:
            return
        qe = self._qe
        points = []
        for c, v, kw in zip(chunks, vectors, self.sparse_of(chunks, sparse), strict=True):
            vector = {"": self._dense(v)}
            if kw:  # only stop words: no keyword vector (store.py's docstring says why)
                vector[SPARSE_NAME] = self._sparse(kw)
            points.append(qe.Point(c.id, vector, chunk_payload(c)))
        with self._lock:
            # Written to the write-ahead log before update() returns: an acknowledged write survives a
            # crash of this process.
            self._shard.update(qe.UpdateOperation.upsert_points(points))

    def delete_chunks(self, tenant: str, document_id: str, keep_version: str | None = None) -> None:
        flt = self._filter(tenant, document_id=document_id, not_version=keep_version)
        with self._lock:
            self._shard.update(self._qe.UpdateOperation.delete_points_by_filter(flt))

    def get_chunks(self, tenant: str, document_id: str, version: str) -> list[StoredChunk]:
        qe = self._qe
        out: list[StoredChunk] = []
        offset = None
        with self._lock:
            while True:
                req = qe.ScrollRequest(offset=offset, limit=256, filter=self._filter(tenant, document_id=document_id, version=version),
                                       with_payload=True)
                points, offset = self._shard.scroll(req)
                out.extend(chunk_from_point(p.id, p.payload) for p in points)
                if offset is None:
                    break
        return sorted(out, key=lambda c: c.position)

    def search_chunks(self, tenant, vector, top_k, document_ids=None, score_threshold=None, exact=False, *,
                      mode="dense", sparse=None, candidates=None, hidden=None) -> list[StoredChunk]:
        qe = self._qe
        self.check_mode(mode, vector, sparse)
        flt = self._filter(tenant, document_ids=document_ids, hidden=hidden)
        params = qe.SearchParams(hnsw_ef=self.hnsw_ef, exact=exact)
        if mode == "keyword":
            if not sparse:
                return []
            req = qe.QueryRequest(limit=top_k, query=qe.Query.Nearest(self._sparse(sparse), using=SPARSE_NAME),
                                  filter=flt, with_payload=True)
        elif mode == "hybrid":
            n = hybrid_candidates(top_k, candidates)
            # The filter goes on each prefetch: the fusion only ranks what the prefetches bring.
            prefetches = [qe.Prefetch(limit=n, query=qe.Query.Nearest(self._dense(vector)), filter=flt, params=params)]
            if sparse:
                prefetches.append(qe.Prefetch(limit=n, query=qe.Query.Nearest(self._sparse(sparse), using=SPARSE_NAME),
                                              filter=flt))
            req = qe.QueryRequest(limit=top_k, prefetches=prefetches, query=qe.Fusion.Rrf(k=RRF_K), with_payload=True)
        else:
            req = qe.QueryRequest(limit=top_k, query=qe.Query.Nearest(self._dense(vector)), filter=flt,
                                  score_threshold=score_threshold, with_payload=True, params=params)
        with self._lock:
            points = self._shard.query(req)
        return [chunk_from_point(p.id, p.payload, p.score) for p in points]

    @staticmethod
    def _dense(vector) -> list[float]:
        return np.asarray(vector, dtype=np.float32).tolist()

    def put_record(self, record: DocumentRecord) -> None:
        point = self._qe.Point(record_id(record.document_id, record.tenant), {}, record_payload(record))
        with self._lock:
            self._records.update(self._qe.UpdateOperation.upsert_points([point]))

    def delete_record(self, tenant: str, document_id: str) -> None:
        with self._lock:
            self._records.update(self._qe.UpdateOperation.delete_points([record_id(document_id, tenant)]))

    def get_records(self, tenant: str, document_ids: list[str]) -> dict[str, DocumentRecord]:
        if not document_ids:
            return {}
        with self._lock:
            points = self._records.retrieve([record_id(d, tenant) for d in document_ids], True, False)
        records = (record_from_payload(p.payload) for p in points)
        # Ids derive from the tenant already; the payload's tenant is checked all the same.
        return {r.document_id: r for r in records if r.tenant == tenant}

    def _scroll_records(self, flt, limit: int, offset=None, payload=True) -> list[DocumentRecord]:
        req = self._qe.ScrollRequest(offset=offset, limit=limit, filter=flt, with_payload=payload)
        with self._lock:
            points, _ = self._records.scroll(req)
        return [record_from_payload(p.payload) for p in points]

    def find_records(self, tenant: str, filter: dict[str, Any], limit: int) -> list[str]:
        include = self._qe.PayloadSelector.Include(["document_id"])
        return [r.document_id for r in self._scroll_records(self._filter(tenant, metadata=filter), limit,
                                                            payload=include)]

    def pending_records(self, tenant: str, limit: int) -> list[DocumentRecord]:
        include = self._qe.PayloadSelector.Include(["document_id", "hidden", "tenant"])
        return self._scroll_records(self._filter(tenant, pending=True), limit, payload=include)

    def list_records(self, tenant: str, limit: int, after: str | None = None) -> list[DocumentRecord]:
        # Scroll pages start at a point id (inclusive): from the record of ``after``, which is then dropped.
        start = record_id(after, tenant) if after is not None else None
        records = self._scroll_records(self._filter(tenant), limit + 1, offset=start)
        return [r for r in records if r.document_id != after][:limit]

    def tenants(self) -> dict[str, int]:
        req = self._qe.FacetRequest("tenant", limit=1_000_000, exact=True)
        with self._lock:
            hits = self._records.facet(req).hits
        return {str(h.value): int(h.count) for h in hits}

    def optimize(self) -> bool:
        """Build the HNSW index for what was added since the last call (blocks writers meanwhile)."""
        with self._lock:
            return self._shard.optimize()

    def count(self) -> int:
        with self._lock:
            return self._shard.count(self._qe.CountRequest(exact=True))

    def close(self) -> None:
        with self._lock:
            for name in ("_shard", "_records"):
                shard = getattr(self, name, None)
                if shard is not None:
                    shard.flush()
                    shard.close()
                    setattr(self, name, None)
