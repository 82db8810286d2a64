"""Serve deployments of the retrieval tier.

``Embedder`` holds the sentence embedder and batches concurrent requests into shared forward passes
(``@serve.batch``); it scales with replicas. ``VectorStore`` owns the store: chunking, embedding documents through
the Embedder's handle, BM25 keyword vectors, writes and searches. A search embeds its query with a copy of the
embedder inside the VectorStore replica: a query is one short text, and the round trip to the Embedder
deployment cost more than the forward pass. With an embedded backend it has exactly one replica (the config
loader refuses more); with the remote backend it scales too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Any

import numpy as np
from opentelemetry.trace import SpanKind
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.calls.handles import call
from serve_app.config.components import RetrievalAppSettings
from serve_app.config.names import EMBEDDER, VECTOR_STORE
from serve_app.config.settings import VectorSettings
from serve_app.errors import NotFound
from serve_app.llm.cpus import compute_executor
from serve_app.observability.genai import vector_search
from serve_app.observability.metrics import metric
from serve_app.observability.tracing import span
from serve_app.protocol.retrieval import SearchHit, SearchMode
from serve_app.vector.chunker import Chunk, chunk_sections, chunk_text
from serve_app.vector.documents import document_entry, document_view
from serve_app.vector.embedder import Embedder, resolve_embedder
from serve_app.vector.keywords import KeywordEncoder
from serve_app.vector.limits import check_documents, check_filter, check_write_budget
from serve_app.vector.store import StoredChunk, VectorStore, content_version

logger = logging.getLogger("ray.serve")

# Texts per forward pass of the embedder: the fastest of the pass sizes measured on 2 cores (benchmarks/).
_PASS = 128
# Texts per embedder call of an ingest: how long a search's query may wait behind an ingest (one slice).
_INGEST_SLICE = 16


def make_store(s: VectorSettings, dim: int, keywords: KeywordEncoder | None = None) -> VectorStore:
    """The configured backend. ``keywords``: the encoder of the deployment's writes, which the store also uses to
    give an older collection its keyword vectors (one configuration for both)."""
    if s.backend == "edge":
        from serve_app.vector.edge_store import QdrantEdgeStore

        return QdrantEdgeStore(s.storage_path() / s.collection, dim, hnsw_ef=s.hnsw_ef, keywords=keywords)
    from serve_app.vector.qdrant_client_store import QdrantClientStore

    if s.backend == "local":
        path = s.storage_path()
        path.mkdir(parents=True, exist_ok=True)
        return QdrantClientStore(s.collection, dim, path=str(path), keywords=keywords)
    return QdrantClientStore(s.collection, dim, url=s.url, api_key=os.environ.get(s.api_key_env) or None,
                             keywords=keywords)


@serve.deployment(name=EMBEDDER, max_ongoing_requests=128, ray_actor_options={"num_cpus": 0})
class EmbedderServer:
    def __init__(self, settings: dict[str, Any]):
        s = RetrievalAppSettings.model_validate(settings).vector
        self._compute = compute_executor("embed")
        if s.embed_threads:
            import torch

            torch.set_num_threads(s.embed_threads)
        self.name = s.embedder_name
        self.embedder = Embedder(s.embedder)
        self._batched.set_max_batch_size(s.embed_batch_size)
        self._batched.set_batch_wait_timeout_s(s.embed_batch_wait_s)

    # One batch at a time: the model's fast tokenizer refuses use from two threads at once. (A pool of
    # model copies with concurrent batches was measured: a few percent of throughput, not worth the memory.)
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[list[str]]) -> list[tuple[np.ndarray, list[int]]]:
        flat = [t for texts in requests for t in texts]
        metric("serve_app_embedder_batch_size").observe(len(flat))
        # One encode call for the whole Serve batch: sentence-transformers sorts it by length, so texts
        # of several requests share padding-efficient forward passes. Off the event loop, so requests
        # keep arriving (and batching) while a batch computes.
        vecs, tokens = await asyncio.get_running_loop().run_in_executor(self._compute, self._encode, flat)
        out, i = [], 0
        for texts in requests:
            out.append((vecs[i : i + len(texts)], tokens[i : i + len(texts)]))
            i += len(texts)
        return out

    def _encode(self, flat: list[str]) -> tuple[np.ndarray, list[int]]:
        # Forward passes of at most _PASS texts: the whole call is length-sorted anyway, and a bounded
        # pass keeps memory bounded when one ingest sends thousands of chunks. Token counts (for usage)
        # in the same thread, after the forward pass.
        vecs = self.embedder.encode(flat, _PASS)
        return vecs, self.embedder.token_counts(flat)

    async def embed(self, texts: list[str]) -> np.ndarray:
        vecs, _ = await self._batched(texts)
        return vecs

    async def embed_with_usage(self, texts: list[str]) -> tuple[np.ndarray, int]:
        vecs, tokens = await self._batched(texts)
        return vecs, sum(tokens)

    def info(self) -> dict[str, Any]:
        return {"model": self.name, "dim": self.embedder.dim, "max_tokens": self.embedder.max_tokens}


@serve.deployment(name=VECTOR_STORE, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class VectorStoreServer:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor; mypy allows only None
        self, settings: dict[str, Any], embedder: DeploymentHandle,
    ):
        from transformers import AutoTokenizer

        self.s = RetrievalAppSettings.model_validate(settings).vector
        self._compute = compute_executor("embed-query")
        # Torch here embeds only queries, one short text each: one thread is as fast in-process, and a parallel
        # region of two threads waits for whichever one a busier process preempted (replicas run niced).
        import torch

        torch.set_num_threads(1)
        self.embedder = embedder
        # Queries are embedded here (the module docstring says why); documents through the Embedder deployment.
        self.query_embedder = await asyncio.to_thread(Embedder, self.s.embedder)
        self.dim = self.query_embedder.dim
        self.keywords = KeywordEncoder()
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_embedder(self.s.embedder))
        self.store = make_store(self.s, self.dim, self.keywords)
        self._unindexed = 0
        self._index_task: asyncio.Task | None = None
        # Writes one at a time: a document's replacement (hide, write, switch, drop the old) must not interleave
        # with another write of the same document.
        self._write_lock = asyncio.Lock()
        self._chunk_lock = asyncio.Lock()

    async def ingest(self, documents: list[dict[str, Any]], *, tenant: str) -> list[dict[str, Any]]:
        """Chunk, embed and store the tenant's documents. A document's old chunks and record are replaced
        (idempotent by id); one whose content is already stored (same version: ``_version``) is neither chunked
        nor embedded again. Every check runs before anything is written: a refused request writes nothing."""
        # The same checks as the route's, here too: the batch-ingest job and other deployments call this
        # handle directly, and this replica's settings are the ones that bound what it writes.
        check_documents(documents, self.s)
        versions = [self._version(d) for d in documents]
        live = await asyncio.to_thread(self.store.get_records, tenant, [d["id"] for d in documents])
        # Unchanged: that version live and whole (one a cut-short write left hidden versions beside goes through
        # replace_document, which puts it right).
        unchanged = [(r := live.get(d["id"])) is not None and r.live and r.version == v and not r.hidden
                     for d, v in zip(documents, versions, strict=True)]
        todo = [d for d, same in zip(documents, unchanged, strict=True) if not same]
        # Off the event loop: tokenizing a document of a million characters takes most of a second, and every
        # other request of this replica (searches included) would wait for it. One at a time, waiting on the
        # loop rather than in a worker thread: the fast tokenizer refuses use from two threads at once, and
        # threads blocked on a lock would hold the pool that searches run in.
        async with self._chunk_lock:
            per_doc = await asyncio.to_thread(self._chunk, todo)
        check_write_budget([len(chunks) for chunks in per_doc], self.s)
        texts = [c.text for chunks in per_doc for c in chunks]
        vectors = await self._embed_in_slices(texts)
        # Keyword vectors of every chunk before the first write: a failure here writes nothing.
        sparse = await asyncio.to_thread(self.keywords.documents, texts)
        written: dict[str, int] = {}
        i = 0
        for d, chunks in zip(todo, per_doc, strict=True):
            stored = [StoredChunk("", c.document_id, c.position, c.text, page=c.page, section=c.section)
                      for c in chunks]
            end = i + len(chunks)
            async with self._write_lock:
                await asyncio.to_thread(functools.partial(
                    self.store.replace_document, d["id"], stored, vectors[i:end], d.get("metadata") or {},
                    sparse[i:end], tenant=tenant, version=self._version(d)))
            i = end
            written[d["id"]] = len(chunks)
        self._unindexed += len(texts)
        self._maybe_index()
        return [{"id": d["id"], "chunks": written[d["id"]] if not same else live[d["id"]].chunks, "unchanged": same,
                 "version": v} for d, same, v in zip(documents, unchanged, versions, strict=True)]

    def _version(self, d: dict[str, Any]) -> str:
        """The document's content hash: its text and metadata, and what its chunks depend on (chunking and
        embedder): the same file sent again is not written again; another embedder or chunking is."""
        s = self.s
        located = [f"{x.get('page')}|{x.get('section')}|{x['text']}" for x in d.get("sections") or ()]
        return content_version(d["id"], [d["text"], *located, s.embedder_name, str(s.chunk_tokens),
                                         str(s.chunk_overlap)], d.get("metadata") or {})

    async def _embed_in_slices(self, texts: list[str]) -> np.ndarray:
        # One embedder call per slice, one after another: the embedder runs one batch at a time, and a whole
        # large document sent as one call held every search's query embedding behind it until the end.
        # Between slices, queries get their turn.
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        parts = [await call(self.embedder, "embed", texts[i : i + _INGEST_SLICE])
                 for i in range(0, len(texts), _INGEST_SLICE)]
        return np.concatenate(parts)

    def _chunk(self, documents: list[dict[str, Any]]) -> list[list[Chunk]]:
        # Chunks carry no metadata: it is stored once, in the document's record (store.py). A file's document
        # comes as located sections (serve_app/files): each chunked on its own, so each chunk knows its place.
        s = self.s
        return [chunk_sections(d["id"], d["sections"], self.tokenizer, s.chunk_tokens, s.chunk_overlap)
                if d.get("sections") else chunk_text(d["id"], d["text"], self.tokenizer, s.chunk_tokens,
                                                     s.chunk_overlap)
                for d in documents]

    def limits(self) -> dict[str, Any]:
        """This replica's vector settings: the batch-ingest job checks its documents against them."""
        return self.s.model_dump(mode="json")

    def _maybe_index(self) -> None:
        # Qdrant Edge searches unindexed points exactly; past a threshold the HNSW index is built in the
        # background so search stays fast as the collection grows.
        optimize = getattr(self.store, "optimize", None)
        if optimize is None or self._unindexed < self.s.index_after_points:
            return
        if self._index_task is not None and not self._index_task.done():
            return
        self._unindexed = 0
        self._index_task = asyncio.get_running_loop().create_task(asyncio.to_thread(optimize))

    async def get_document(self, document_id: str, *, tenant: str) -> dict[str, Any]:
        # Reads and rebuilds the text in a worker thread: rejoining a long document's chunks is CPU work.
        view = await asyncio.to_thread(self._read_document, tenant, document_id)
        if view is None:
            raise NotFound(f"document {document_id!r} does not exist", "id")
        return view

    def _read_document(self, tenant: str, document_id: str) -> dict[str, Any] | None:
        found = self.store.document_chunks(tenant, document_id)
        if found is None:
            return None
        record, chunks = found
        return document_view(document_id, chunks, record.metadata)

    async def delete_document(self, document_id: str, *, tenant: str, version: str | None = None) -> dict[str, Any]:
        """``version``: delete only while that version is the live one (a file's delete: serve_app/ingress/files.py)."""
        async with self._write_lock:
            n = await asyncio.to_thread(self.store.delete_document, tenant, document_id, version)
        if not n:
            raise NotFound(f"document {document_id!r} does not exist", "id")
        return {"id": document_id, "deleted": True, "chunks": n}

    async def list_documents(self, limit: int, after: str | None = None, *, tenant: str) -> dict[str, Any]:
        """One page of the tenant's documents (id, metadata, chunk count), in a stable order."""
        records = await asyncio.to_thread(self.store.list_records, tenant, limit + 1, after)
        live = [r for r in records[:limit] if r.live]  # documents being written for the first time: not yet
        return {"object": "list", "data": [document_entry(r) for r in live],
                "first_id": live[0].document_id if live else None,
                "last_id": records[min(limit, len(records)) - 1].document_id if records else None,
                "has_more": len(records) > limit}

    async def tenants(self) -> dict[str, int]:
        """Documents per tenant, every tenant's (the admin's view)."""
        return await asyncio.to_thread(self.store.tenants)

    # Concurrent queries share forward passes; the first one does not wait for company (a batch forms from the
    # queries that arrive while one runs). One batch at a time: the tokenizer refuses use from two threads.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _embed_queries(self, queries: list[str]) -> list[np.ndarray]:
        vecs = await asyncio.get_running_loop().run_in_executor(self._compute, self.query_embedder.encode, queries, _PASS)
        return list(vecs)

    async def search(
        self, query: str, top_k: int, filter: dict[str, Any] | None = None, score_threshold: float | None = None,
        mode: SearchMode | None = None, *, tenant: str,
    ) -> list[SearchHit]:
        check_filter(filter, self.s)  # RAG and the agent search through this handle too
        # A threshold is a cosine similarity: with one and no mode, the search is dense (the store refuses a
        # threshold in the other modes).
        mode = mode or ("dense" if score_threshold is not None else self.s.search_mode)
        started = time.perf_counter()
        name, attributes = vector_search(self.s.collection, top_k=top_k, filtered=filter is not None)
        with span(name, SpanKind.CLIENT, mode=mode, **attributes) as s:
            # Keyword search needs no embedding; BM25 of a query is microseconds of Rust.
            vec = await self._embed_queries(query) if mode != "keyword" else None
            sparse = self.keywords.query(query) if mode != "dense" else None
            hits = await asyncio.to_thread(self.store.search, vec, top_k, filter, score_threshold,
                                           max_filter_documents=self.s.max_filter_documents, mode=mode,
                                           sparse=sparse, candidates=max(top_k, self.s.hybrid_candidates),
                                           tenant=tenant)
            s.set_attribute("hits", len(hits))
        metric("serve_app_vector_search_duration_seconds").observe(time.perf_counter() - started)
        metric("serve_app_vector_search_hits").observe(len(hits))
        # Typed hits cross to the caller's process as they are (pydantic models pickle).
        return [_hit(h) for h in hits]

    async def health(self) -> dict[str, Any]:
        count = await asyncio.to_thread(self.store.count)
        return {"backend": self.s.backend, "collection": self.s.collection, "chunks": count, "pid": os.getpid()}

    async def check_health(self) -> None:
        await asyncio.to_thread(self.store.count)

    def __del__(self):
        store = getattr(self, "store", None)
        if store is not None:
            try:
                store.close()
            except Exception:
                logger.exception("vector store close failed")


def _hit(c: StoredChunk) -> SearchHit:
    if c.score is None:  # every backend's search scores what it returns
        raise ValueError(f"the store returned the unscored chunk {c.id} as a search hit")
    return SearchHit(document_id=c.document_id, chunk_id=c.id, position=c.position, text=c.text, score=c.score,
                     metadata=c.metadata, page=c.page, section=c.section)
