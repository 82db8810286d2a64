"""Vector store on qdrant-client: a Qdrant server or cluster by URL (``remote``), or qdrant-client's local
mode on a folder (``local``: pure Python, exact search, SQLite persistence). Both speak the same client API,
so one class serves both. Chunks live in ``collection``, document records in ``<collection>_documents``, a
collection without vectors."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np

from serve_app.vector.store import (DocumentRecord, StoredChunk, VectorStore, chunk_from_point, chunk_payload,
                                    record_from_payload, record_id, record_payload, records_name)


def _payload_filter(models, document_id: str | None = None, metadata: dict[str, Any] | None = None,
                    from_position: int | None = None, document_ids: list[str] | None = None):
    must = []
    if document_id is not None:
        must.append(models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id)))
    if document_ids is not None:
        must.append(models.FieldCondition(key="document_id", match=models.MatchAny(any=list(document_ids))))
    if from_position:
        must.append(models.FieldCondition(key="position", range=models.Range(gte=from_position)))
    for key, value in (metadata or {}).items():
        if isinstance(value, float):
            # Exact match is for keywords, integers and booleans: a float is matched as the one-point range.
            must.append(models.FieldCondition(key=f"metadata.{key}", range=models.Range(gte=value, lte=value)))
        else:
            must.append(models.FieldCondition(key=f"metadata.{key}", match=models.MatchValue(value=value)))
    return models.Filter(must=must) if must else None


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
    ):
        from qdrant_client import QdrantClient, models

        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (local mode) or url (server)")
        self._m = models
        self.collection = collection
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
        self._create(collection, models.VectorParams(size=dim, distance=models.Distance.COSINE),
                     {"document_id": models.PayloadSchemaType.KEYWORD, "position": models.PayloadSchemaType.INTEGER})
        # Records carry no vector: a collection without any (Qdrant takes it; points then have vector={}).
        self._create(self.records, {}, {"document_id": models.PayloadSchemaType.KEYWORD})

    def _create(self, name: str, vectors_config, indexes: dict[str, Any]) -> None:
        if self._client.collection_exists(name):
            return
        self._client.create_collection(name, vectors_config=vectors_config)
        if not self._local:  # local mode has no payload indexes
            for key, kind in indexes.items():
                self._client.create_payload_index(name, key, kind)

    def upsert(self, chunks: list[StoredChunk], vectors: np.ndarray) -> None:
        if not chunks:
            return
        points = [
            self._m.PointStruct(
                id=c.id,
                vector=v.tolist(),
                payload=chunk_payload(c),
            )
            for c, v in zip(chunks, vectors)
        ]
        # wait=True: acknowledged only once the server (or local SQLite) has applied the write.
        with self._lock:
            self._client.upsert(self.collection, points=points, wait=True)

    def delete_chunks(self, document_id: str, from_position: int = 0) -> None:
        flt = _payload_filter(self._m, document_id=document_id, from_position=from_position)
        with self._lock:
            self._client.delete(self.collection, points_selector=self._m.FilterSelector(filter=flt), wait=True)

    def get_chunks(self, document_id: str) -> list[StoredChunk]:
        flt = _payload_filter(self._m, document_id=document_id)
        out, offset = [], None
        while True:
            with self._lock:
                points, offset = self._client.scroll(self.collection, scroll_filter=flt, limit=256, offset=offset, with_payload=True)
            out.extend(chunk_from_point(p.id, p.payload) for p in points)
            if offset is None:
                break
        return sorted(out, key=lambda c: c.position)

    def search_chunks(self, vector, top_k, document_ids=None, score_threshold=None, exact=False) -> list[StoredChunk]:
        with self._lock:
            res = self._client.query_points(
                self.collection,
                query=np.asarray(vector, dtype=np.float32).tolist(),
                limit=top_k,
                query_filter=_payload_filter(self._m, document_ids=document_ids),
                score_threshold=score_threshold,
                with_payload=True,
                # Local mode is always exact.
                search_params=self._m.SearchParams(exact=True) if exact and not self._local else None,
            )
        return [chunk_from_point(p.id, p.payload, p.score) for p in res.points]

    def put_record(self, record: DocumentRecord) -> None:
        point = self._m.PointStruct(id=record_id(record.document_id), vector={}, payload=record_payload(record))
        with self._lock:
            self._client.upsert(self.records, points=[point], wait=True)

    def delete_record(self, document_id: str) -> None:
        selector = self._m.PointIdsList(points=[record_id(document_id)])
        with self._lock:
            self._client.delete(self.records, points_selector=selector, wait=True)

    def get_records(self, document_ids: list[str]) -> dict[str, DocumentRecord]:
        if not document_ids:
            return {}
        with self._lock:
            points = self._client.retrieve(self.records, [record_id(d) for d in document_ids], with_payload=True)
        records = (record_from_payload(p.payload) for p in points)
        return {r.document_id: r for r in records}

    def find_records(self, filter: dict[str, Any], limit: int) -> list[str]:
        with self._lock:
            points, _ = self._client.scroll(self.records, scroll_filter=_payload_filter(self._m, metadata=filter),
                                            limit=limit, with_payload=["document_id"])
        return [p.payload["document_id"] for p in points]

    def count(self) -> int:
        with self._lock:
            return self._client.count(self.collection, exact=True).count

    def close(self) -> None:
        with self._lock:
            self._client.close()
