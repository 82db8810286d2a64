"""A collection made before keyword search (a dense vector only) keeps every chunk and record when the store
opens it and gains keyword search: Edge copies it into a new shard with BM25 vectors and swaps it in, without
ever touching the old shard before the swap, so a crash at any step leaves either the old shard (a half-built
new one is discarded and the migration redone) or a swap that the next open finishes. qdrant-client adds the
keyword vector in place and backfills it; where it cannot (a server older than 1.18), keyword and hybrid search
answer 409 and dense search goes on."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from serve_app.errors import status_for
from serve_app.vector import edge_migration
from serve_app.vector.chunker import chunk_id
from serve_app.vector.edge_store import QdrantEdgeStore
from serve_app.vector.keywords import KeywordEncoder
from serve_app.vector.qdrant_client_store import QdrantClientStore
from serve_app.vector.store import LEGACY_VERSION, NoKeywordIndex, StoredChunk, record_id

pytestmark = pytest.mark.unit

DIM = 16
ENC = KeywordEncoder()
WORDS = ["harbour", "boats", "bread", "helium", "patience", "morning", "river", "garden"]


def _corpus():
    rng = np.random.default_rng(11)
    chunks = []
    for d in range(12):
        for p in range(4):
            words = " ".join(WORDS[(d + p + i) % len(WORDS)] for i in range(3))
            chunks.append(StoredChunk(chunk_id(f"doc{d}", p), f"doc{d}", p, f"The {words} of part {p}"))
    chunks[5].text = "A zeppelin over the harbour"  # the only chunk with "zeppelin"
    chunks[9].text = "the of and"  # stop words only: no keyword vector
    vecs = rng.normal(size=(len(chunks), DIM))
    return chunks, (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def _meta(d):
    return {"group": d % 3}


def _old_chunk(c):
    """A chunk's payload as written before tenants and versions."""
    return {"document_id": c.document_id, "position": c.position, "text": c.text}


def _old_record(d):
    return {"document_id": f"doc{d}", "metadata": _meta(d), "chunks": 4}


def _old_edge(path: Path):
    """Chunks and records as the store wrote them before keyword search."""
    chunks, vecs = _corpus()
    dense = qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine)
    shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=dense))
    shard.update(qe.UpdateOperation.create_field_index("document_id", qe.PayloadSchemaType.Keyword))
    shard.update(qe.UpdateOperation.create_field_index("position", qe.PayloadSchemaType.Integer))
    points = [qe.Point(c.id, v.tolist(), _old_chunk(c)) for c, v in zip(chunks, vecs, strict=True)]
    shard.update(qe.UpdateOperation.upsert_points(points))
    unused = {"unused": qe.EdgeVectorParams(size=1, distance=qe.Distance.Dot)}
    records = qe.EdgeShard.create(str(path.with_name(path.name + "_documents")), qe.EdgeConfig(vectors=unused))
    records.update(qe.UpdateOperation.create_field_index("document_id", qe.PayloadSchemaType.Keyword))
    records.update(qe.UpdateOperation.upsert_points([
        qe.Point(record_id(f"doc{d}"), {}, _old_record(d)) for d in range(12)]))
    for s in (shard, records):
        s.flush()
        s.close()


def _assert_intact(store):
    """Every chunk and record as written, dense vectors unchanged, and keyword search over all of them."""
    chunks, vecs = _corpus()
    assert store.keywords and store.count() == len(chunks)
    for d in range(12):
        # The keyless tenant's, as the legacy version, under the ids they had.
        _, got = store.document_chunks("", f"doc{d}")
        assert got == [StoredChunk(c.id, c.document_id, c.position, c.text, "", LEGACY_VERSION)
                       for c in chunks if c.document_id == f"doc{d}"]
    records = store.get_records("", [f"doc{d}" for d in range(12)])
    assert {d: (r.metadata, r.chunks) for d, r in records.items()} == {f"doc{d}": (_meta(d), 4) for d in range(12)}
    for q in vecs[:3]:
        order = np.argsort(-(vecs @ q))[:5]
        assert [h.id for h in store.search(q, 5, exact=True)] == [chunks[i].id for i in order]
    assert [h.id for h in store.search(None, 3, mode="keyword", sparse=ENC.query("zeppelin"))] == [chunks[5].id]
    hits = store.search(None, 100, mode="keyword", sparse=ENC.query("harbour"))
    assert {h.id for h in hits} == {c.id for c in chunks if "harbour" in c.text}
    hits = store.search(vecs[0], 5, filter={"group": 1}, mode="hybrid", sparse=ENC.query("zeppelin harbour"))
    assert len(hits) == 5 and all(h.metadata == {"group": 1} for h in hits)


def _all_texts(store):
    return [h.text for h in store.search(np.ones(DIM, np.float32), 100, exact=True)]


def _folders(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(edge_migration, "_PAGE", 7)  # several pages, a short last one


def test_edge_old_layout_is_migrated_on_open(tmp_path, small_pages, monkeypatch):
    _old_edge(tmp_path / "docs")
    store = QdrantEdgeStore(tmp_path / "docs", DIM)
    try:
        _assert_intact(store)
        assert set(store._shard.info().payload_schema) == {"tenant", "document_id", "version", "position"}
        assert _folders(tmp_path) == ["docs", "docs_documents"]
        # Writes after the migration carry keyword vectors as usual.
        store.replace_document("new", [StoredChunk(chunk_id("new", 0), "new", 0, "Another zeppelin")],
                               np.ones((1, DIM), np.float32))
        assert {h.document_id for h in store.search(None, 5, mode="keyword", sparse=ENC.query("zeppelin"))} == {
            "doc1", "new"}
    finally:
        store.close()
    # Once only: the migrated shard opens as it is.
    monkeypatch.setattr(edge_migration, "migrate", lambda *a: pytest.fail("migrated twice"))
    store = QdrantEdgeStore(tmp_path / "docs", DIM)
    try:
        store.delete_document("", "new")
        _assert_intact(store)
        # A legacy document written again: its legacy chunks give way to the new version's.
        store.replace_document("doc2", [StoredChunk("", "doc2", 0, "rewritten")], np.ones((1, DIM), np.float32))
        _, got = store.document_chunks("", "doc2")
        assert [(c.text, c.version != LEGACY_VERSION) for c in got] == [("rewritten", True)]
        assert store.count() == 48 - 4 + 1
    finally:
        store.close()


def test_edge_failed_copy_leaves_the_old_shard(tmp_path, small_pages, monkeypatch):
    _old_edge(tmp_path / "docs")
    real, calls = edge_migration._with_keywords, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(edge_migration, "_with_keywords", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        QdrantEdgeStore(tmp_path / "docs", DIM)
    assert _folders(tmp_path) == ["docs", "docs_documents"]  # no half-built shard left
    old = qe.EdgeShard.load(str(tmp_path / "docs"))
    try:
        assert old.count(qe.CountRequest(exact=True)) == len(_corpus()[0]) and not edge_migration.has_keywords(qe, old)
    finally:
        old.close()
    monkeypatch.setattr(edge_migration, "_with_keywords", real)
    store = QdrantEdgeStore(tmp_path / "docs", DIM)
    try:
        _assert_intact(store)
    finally:
        store.close()


def test_edge_half_built_shard_from_a_crash_is_discarded(tmp_path):
    _old_edge(tmp_path / "docs")
    # What a crash during the copy leaves: a new-layout shard with part of the chunks (and one that must not
    # survive: the rebuild starts from the old shard again).
    half = qe.EdgeShard.create(str(tmp_path / "docs.migrating"), qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine),
        sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}))
    ghost = StoredChunk(chunk_id("ghost", 0), "ghost", 0, "zeppelin")
    half.update(qe.UpdateOperation.upsert_points([qe.Point(ghost.id, {"": [1.0] * DIM}, _old_chunk(ghost))]))
    half.flush()
    half.close()
    store = QdrantEdgeStore(tmp_path / "docs", DIM)
    try:
        _assert_intact(store)
        assert store.document_chunks("", "ghost") is None and "ghost" not in str(_all_texts(store))
        assert _folders(tmp_path) == ["docs", "docs_documents"]
    finally:
        store.close()


def test_edge_crash_between_the_renames_finishes_the_swap(tmp_path, monkeypatch):
    _old_edge(tmp_path / "docs")
    rename = Path.rename

    def crash_on_second(self, target):
        if self.name.endswith(".migrating"):
            raise OSError("killed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_second)
    with pytest.raises(OSError, match="killed"):
        QdrantEdgeStore(tmp_path / "docs", DIM)
    assert _folders(tmp_path) == ["docs.migrating", "docs.replaced", "docs_documents"]
    monkeypatch.setattr(Path, "rename", rename)
    store = QdrantEdgeStore(tmp_path / "docs", DIM)
    try:
        _assert_intact(store)
        assert _folders(tmp_path) == ["docs", "docs_documents"]
    finally:
        store.close()


def _old_local(path: Path):
    from qdrant_client import QdrantClient, models

    chunks, vecs = _corpus()
    client = QdrantClient(path=str(path))
    client.create_collection("docs", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    client.create_collection("docs_documents", vectors_config={})
    client.upsert("docs", [models.PointStruct(id=c.id, vector=v.tolist(), payload=_old_chunk(c))
                           for c, v in zip(chunks, vecs, strict=True)])
    client.upsert("docs_documents", [models.PointStruct(id=record_id(f"doc{d}"), vector={}, payload=_old_record(d))
                                     for d in range(12)])
    client.close()


def test_qdrant_client_adds_and_backfills_keyword_vectors(tmp_path, monkeypatch):
    import serve_app.vector.qdrant_client_store as qcs

    _old_local(tmp_path)
    monkeypatch.setattr(qcs, "_PAGE", 7)
    store = QdrantClientStore("docs", DIM, path=str(tmp_path))
    try:
        _assert_intact(store)
    finally:
        store.close()
    store = QdrantClientStore("docs", DIM, path=str(tmp_path))  # the keyword vectors were persisted
    try:
        _assert_intact(store)
    finally:
        store.close()


def test_qdrant_client_without_the_vector_refuses_keyword_search(tmp_path, monkeypatch):
    from qdrant_client import QdrantClient
    from qdrant_client.http.exceptions import UnexpectedResponse

    def old_server(*args, **kwargs):
        raise UnexpectedResponse(404, "Not Found", b"", None)

    _old_local(tmp_path)
    monkeypatch.setattr(QdrantClient, "create_vector_name", old_server)
    store = QdrantClientStore("docs", DIM, path=str(tmp_path))
    try:
        assert not store.keywords
        for mode in ("keyword", "hybrid"):
            with pytest.raises(NoKeywordIndex) as err:
                store.search(np.ones(DIM, np.float32), 3, mode=mode, sparse=ENC.query("zeppelin"))
            assert status_for(err.value) == 409 and err.value.param == "mode" and "re-ingest" in err.value.message
        back = pickle.loads(pickle.dumps(err.value))  # it crosses Ray actors
        assert type(back) is NoKeywordIndex and back.message == err.value.message
        # Dense search and writes go on (dense-only).
        chunks, vecs = _corpus()
        store.replace_document("new", [StoredChunk(chunk_id("new", 0), "new", 0, "zeppelin")], vecs[:1])
        assert store.search(vecs[0], 1, exact=True)[0].document_id == "new"
        assert store.count() == len(chunks) + 1
    finally:
        store.close()
