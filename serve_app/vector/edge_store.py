"""Vector store on Qdrant Edge (qdrant-edge-py): the Qdrant engine in-process, with HNSW, payload indexes
and a write-ahead log. One process per storage folder (single writer)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.vector.store import StoredChunk, VectorStore, chunk_from_point, chunk_payload


class QdrantEdgeStore(VectorStore):
    def __init__(self, path: str | Path, dim: int, hnsw_ef: int = 128, indexing_threshold: int | None = None):
        import qdrant_edge as qe

        self._qe = qe
        self.path = Path(path)
        self.hnsw_ef = hnsw_ef
        # Qdrant Edge calls are synchronous and the shard is single-writer: serialize access from the
        # deployment's threads.
        self._lock = threading.RLock()
        exists = self.path.exists() and any(self.path.iterdir())
        if exists:
            self._shard = qe.EdgeShard.load(str(self.path))
        else:
            optimizers = qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold) if indexing_threshold else None
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
                optimizers=optimizers,
            )
            self._shard = qe.EdgeShard.create(str(self.path), config)
            self._shard.update(qe.UpdateOperation.create_field_index("document_id", qe.PayloadSchemaType.Keyword))
            self._shard.update(qe.UpdateOperation.create_field_index("position", qe.PayloadSchemaType.Integer))

    def _filter(self, document_id=None, metadata: dict[str, Any] | None = None, from_position: int | None = None):
        qe = self._qe
        must = []
        if document_id is not None:
            must.append(qe.FieldCondition(key="document_id", match=qe.MatchValue(document_id)))
        if from_position:
            must.append(qe.FieldCondition(key="position", range=qe.RangeFloat(gte=float(from_position))))
        for key, value in (metadata or {}).items():
            if isinstance(value, float):
                # Exact match is for keywords, integers and booleans; a number with a fraction is matched
                # as the one-point range.
                must.append(qe.FieldCondition(key=f"metadata.{key}", range=qe.RangeFloat(gte=value, lte=value)))
            else:
                must.append(qe.FieldCondition(key=f"metadata.{key}", match=qe.MatchValue(value)))
        return qe.Filter(must=must) if must else None

    def upsert(self, chunks: list[StoredChunk], vectors: np.ndarray) -> None:
        if not chunks:
            return
        qe = self._qe
        points = [
            qe.Point(
                c.id,
                np.asarray(v, dtype=np.float32).tolist(),
                chunk_payload(c),
            )
            for c, v in zip(chunks, vectors)
        ]
        with self._lock:
            # Written to the write-ahead log before update() returns: an acknowledged write survives a
            # crash of this process.
            self._shard.update(qe.UpdateOperation.upsert_points(points))

    def delete_chunks(self, document_id: str, from_position: int = 0) -> None:
        flt = self._filter(document_id=document_id, from_position=from_position)
        with self._lock:
            self._shard.update(self._qe.UpdateOperation.delete_points_by_filter(flt))

    def get_chunks(self, document_id: str) -> list[StoredChunk]:
        qe = self._qe
        out, offset = [], None
        with self._lock:
            while True:
                req = qe.ScrollRequest(offset=offset, limit=256, filter=self._filter(document_id=document_id), with_payload=True)
                points, offset = self._shard.scroll(req)
                out.extend(chunk_from_point(p.id, p.payload) for p in points)
                if offset is None:
                    break
        return sorted(out, key=lambda c: c.position)

    def search(self, vector, top_k, filter=None, score_threshold=None, exact=False) -> list[StoredChunk]:
        qe = self._qe
        req = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist()),
            filter=self._filter(metadata=filter),
            score_threshold=score_threshold,
            with_payload=True,
            params=qe.SearchParams(hnsw_ef=self.hnsw_ef, exact=exact),
        )
        with self._lock:
            points = self._shard.query(req)
        return [chunk_from_point(p.id, p.payload, p.score) for p in points]

    def optimize(self) -> bool:
        """Build the HNSW index for what was added since the last call (blocks writers meanwhile)."""
        with self._lock:
            return self._shard.optimize()

    def count(self) -> int:
        with self._lock:
            return self._shard.count(self._qe.CountRequest(exact=True))

    def close(self) -> None:
        with self._lock:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None
