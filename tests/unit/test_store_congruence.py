"""Every vector-store backend behaves the same: same data gives the same exact top-k ids and scores, the
same filters, replacement without duplicates or leftovers, deletion, and data that survives reopening. And
the same layout: a document's metadata is stored once, in its record, never in its chunks' payloads; hits
and reads get it from the record; a filter is resolved against the records (bounded), then the chunks are
searched; replacing or deleting a document keeps its record consistent.
The remote backend shares its code with 'local' (both are qdrant-client); a Qdrant server is never
mocked: set SERVE_APP_TEST_QDRANT_URL to a server to run these tests on it too."""

import os
import uuid

import numpy as np
import pytest

from serve_app.vector.chunker import chunk_id
from serve_app.vector.edge_store import QdrantEdgeStore
from serve_app.vector.qdrant_client_store import QdrantClientStore
from serve_app.vector.store import FilterTooBroad, StoredChunk

pytestmark = pytest.mark.unit

DIM = 32
N_DOCS, PER_DOC = 40, 5
QDRANT_URL = os.environ.get("SERVE_APP_TEST_QDRANT_URL")
KINDS = ["edge", "local", pytest.param("remote", marks=pytest.mark.skipif(
    not QDRANT_URL, reason="no Qdrant server: set SERVE_APP_TEST_QDRANT_URL"))]


def _open(kind, path):
    if kind == "edge":
        return QdrantEdgeStore(path / "edge", DIM)
    if kind == "remote":
        # One collection per test (the name is kept in the folder, so reopening finds the same one).
        name_file = path / "remote-collection"
        if not name_file.exists():
            name_file.write_text(f"congruence_{uuid.uuid4().hex[:12]}")
        return QdrantClientStore(name_file.read_text(), DIM, url=QDRANT_URL)
    return QdrantClientStore("docs", DIM, path=str(path / "local"))


def _drop(store):
    if isinstance(store, QdrantClientStore) and not store._local:
        for name in (store.collection, store.records):
            store._client.delete_collection(name)
    store.close()


def _meta(d):
    return {"group": d % 4, "lang": "en" if d % 2 else "de", "weight": (d % 3) + 0.25}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    chunks, vecs = [], []
    for d in range(N_DOCS):
        for p in range(PER_DOC):
            chunks.append(StoredChunk(chunk_id(f"doc{d}", p), f"doc{d}", p, f"text {d}/{p}"))
            v = rng.normal(size=DIM)
            vecs.append(v / np.linalg.norm(v))
    return chunks, np.asarray(vecs, dtype=np.float32)


def _load(store, chunks, vecs):
    for d in range(N_DOCS):
        rows = slice(d * PER_DOC, (d + 1) * PER_DOC)
        store.replace_document(f"doc{d}", chunks[rows], vecs[rows], _meta(d))


def _chunk_payloads(store):
    """Every chunk's stored payload, read through the backend's own client."""
    if isinstance(store, QdrantEdgeStore):
        qe = store._qe
        points, _ = store._shard.scroll(qe.ScrollRequest(limit=10_000, with_payload=True))
    else:
        points, _ = store._client.scroll(store.collection, limit=10_000, with_payload=True)
    return [p.payload for p in points]


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    s = _open(request.param, tmp_path)
    _load(s, *_data())
    yield s
    _drop(s)


def _exact(vecs, chunks, q, k, keep=lambda c: True):
    scores = vecs @ q
    order = [i for i in np.argsort(-scores) if keep(chunks[i])][:k]
    return [chunks[i].id for i in order], [float(scores[i]) for i in order]


def _doc(c):
    return int(c.document_id.removeprefix("doc"))


def test_exact_search_matches_brute_force(store):
    chunks, vecs = _data()
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.normal(size=DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        hits = store.search(q, 10, exact=True)
        ids, scores = _exact(vecs, chunks, q, 10)
        assert [h.id for h in hits] == ids
        assert np.allclose([h.score for h in hits], scores, atol=1e-4)
        assert all(h.text and h.document_id for h in hits)
        # Each hit carries its document's metadata, read from the record.
        assert all(h.metadata == _meta(_doc(h)) for h in hits)


def test_filter_and_threshold(store):
    chunks, vecs = _data()
    q = vecs[7]
    hits = store.search(q, 8, filter={"group": 2, "lang": "de"}, exact=True)  # "de": the even documents
    ids, _ = _exact(vecs, chunks, q, 8, keep=lambda c: _meta(_doc(c))["group"] == 2 and _doc(c) % 2 == 0)
    assert [h.id for h in hits] == ids and ids
    assert all(h.metadata["group"] == 2 for h in hits)
    # A number with a fraction (exact match in the stores is for keywords, integers and booleans).
    hits = store.search(q, 8, filter={"weight": 1.25, "lang": "de"}, exact=True)
    ids, _ = _exact(vecs, chunks, q, 8, keep=lambda c: _meta(_doc(c))["weight"] == 1.25 and _doc(c) % 2 == 0)
    assert [h.id for h in hits] == ids and ids
    assert store.search(q, 8, filter={"lang": "fr"}, exact=True) == []
    top = store.search(q, 5, score_threshold=0.999, exact=True)
    assert [h.id for h in top] == [chunks[7].id]


def test_metadata_is_stored_once_per_document(store):
    payloads = _chunk_payloads(store)
    assert len(payloads) == N_DOCS * PER_DOC
    assert all(set(p) == {"document_id", "position", "text"} for p in payloads)
    records = store.get_records([f"doc{d}" for d in range(N_DOCS)] + ["never"])
    assert {d: (r.metadata, r.chunks) for d, r in records.items()} == {
        f"doc{d}": (_meta(d), PER_DOC) for d in range(N_DOCS)}
    assert store.get_records([]) == {}
    assert store.count() == N_DOCS * PER_DOC  # records are not chunks


def test_filter_is_bounded_by_the_documents_it_matches(store):
    _, vecs = _data()
    # "lang": "de" matches 20 documents.
    assert len(store.search(vecs[0], 3, filter={"lang": "de"}, max_filter_documents=20)) == 3
    with pytest.raises(FilterTooBroad) as err:
        store.search(vecs[0], 3, filter={"lang": "de"}, max_filter_documents=19)
    assert err.value.param == "filter" and "narrow" in err.value.message
    assert sorted(store.find_records({"group": 1}, 100)) == sorted(f"doc{d}" for d in range(N_DOCS) if d % 4 == 1)
    assert len(store.find_records({"group": 1}, 3)) == 3


def test_replace_leaves_no_duplicates_or_leftovers(store):
    chunks, vecs = _data()
    rng = np.random.default_rng(2)
    new = [StoredChunk(chunk_id("doc3", p), "doc3", p, f"new {p}") for p in range(2)]
    store.replace_document("doc3", new, rng.normal(size=(2, DIM)).astype(np.float32), {"group": 9})
    got = store.get_chunks("doc3")
    assert [(c.position, c.text) for c in got] == [(0, "new 0"), (1, "new 1")]
    assert store.count() == len(chunks) - PER_DOC + 2
    # The record follows: new metadata and chunk count; the old metadata no longer matches.
    record = store.get_records(["doc3"])["doc3"]
    assert (record.metadata, record.chunks) == ({"group": 9}, 2)
    assert {h.document_id for h in store.search(vecs[15], 50, filter={"group": 9}, exact=True)} == {"doc3"}
    assert "doc3" not in {h.document_id for h in store.search(vecs[15], 50, filter={"group": 3}, exact=True)}


def test_delete_and_absent(store):
    _, vecs = _data()
    store.delete_document("doc5")
    assert store.get_chunks("doc5") == []
    assert store.get_records(["doc5"]) == {}
    assert "doc5" not in store.find_records({"group": 1}, 100)
    assert "doc5" not in {h.document_id for h in store.search(vecs[25], 50, exact=True)}
    assert store.get_chunks("never") == []
    store.delete_document("never")  # absent: nothing to do, no error
    assert store.count() == N_DOCS * PER_DOC - PER_DOC


@pytest.mark.parametrize("kind", KINDS)
def test_data_survives_reopening(kind, tmp_path):
    chunks, vecs = _data()
    s = _open(kind, tmp_path)
    _load(s, chunks, vecs)
    before = [h.id for h in s.search(vecs[0], 5, exact=True)]
    s.close()
    s = _open(kind, tmp_path)
    try:
        assert s.count() == len(chunks)
        assert [h.id for h in s.search(vecs[0], 5, exact=True)] == before
        assert s.get_records(["doc1"])["doc1"].metadata == _meta(1)
        assert len(s.search(vecs[0], 5, filter={"group": 1}, exact=True)) == 5
    finally:
        _drop(s)


def test_concurrent_threads(store):
    """The deployment calls the store from worker threads: concurrent reads and writes must not fail."""
    from concurrent.futures import ThreadPoolExecutor

    chunks, vecs = _data(seed=3)

    def work(i):
        d = i % N_DOCS
        rows = slice(d * PER_DOC, (d + 1) * PER_DOC)
        store.replace_document(f"doc{d}", chunks[rows], vecs[rows], _meta(d))
        assert len(store.search(vecs[i], 5)) == 5
        assert len(store.search(vecs[i], 5, filter={"group": d % 4})) == 5
        return len(store.get_chunks(f"doc{d}"))

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(work, range(64))) == {PER_DOC}
    assert store.count() == N_DOCS * PER_DOC
