"""Every vector-store backend behaves the same: same data gives the same exact top-k ids and scores, the
same filters, replacement without duplicates or leftovers, deletion, and data that survives reopening.
The remote backend shares its code with 'local' (both are qdrant-client); a Qdrant server is never
mocked."""

import numpy as np
import pytest

from serve_app.vector.chunker import chunk_id
from serve_app.vector.edge_store import QdrantEdgeStore
from serve_app.vector.qdrant_client_store import QdrantClientStore
from serve_app.vector.store import StoredChunk

pytestmark = pytest.mark.unit

DIM = 32
N_DOCS, PER_DOC = 40, 5


def _open(kind, path):
    if kind == "edge":
        return QdrantEdgeStore(path / "edge", DIM)
    return QdrantClientStore("docs", DIM, path=str(path / "local"))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    chunks, vecs = [], []
    for d in range(N_DOCS):
        for p in range(PER_DOC):
            metadata = {"group": d % 4, "lang": "en" if d % 2 else "de", "weight": (d % 3) + 0.25}
            chunks.append(StoredChunk(chunk_id(f"doc{d}", p), f"doc{d}", p, f"text {d}/{p}", metadata))
            v = rng.normal(size=DIM)
            vecs.append(v / np.linalg.norm(v))
    return chunks, np.asarray(vecs, dtype=np.float32)


@pytest.fixture(params=["edge", "local"])
def store(request, tmp_path):
    s = _open(request.param, tmp_path)
    chunks, vecs = _data()
    s.upsert(chunks, vecs)
    yield s
    s.close()


def _exact(vecs, chunks, q, k, keep=lambda c: True):
    scores = vecs @ q
    order = [i for i in np.argsort(-scores) if keep(chunks[i])][:k]
    return [chunks[i].id for i in order], [float(scores[i]) for i in order]


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


def test_filter_and_threshold(store):
    chunks, vecs = _data()
    q = vecs[7]
    hits = store.search(q, 8, filter={"group": 2, "lang": "de"}, exact=True)
    ids, _ = _exact(vecs, chunks, q, 8, keep=lambda c: c.metadata["group"] == 2 and c.metadata["lang"] == "de")
    assert [h.id for h in hits] == ids
    # A number with a fraction (exact match in the stores is for keywords, integers and booleans).
    hits = store.search(q, 8, filter={"weight": 1.25, "lang": "de"}, exact=True)
    ids, _ = _exact(vecs, chunks, q, 8, keep=lambda c: c.metadata["weight"] == 1.25 and c.metadata["lang"] == "de")
    assert [h.id for h in hits] == ids and ids
    top = store.search(q, 5, score_threshold=0.999, exact=True)
    assert [h.id for h in top] == [chunks[7].id]


def test_replace_leaves_no_duplicates_or_leftovers(store):
    chunks, _ = _data()
    rng = np.random.default_rng(2)
    new = [StoredChunk(chunk_id("doc3", p), "doc3", p, f"new {p}", {"group": 9}) for p in range(2)]
    store.replace_document("doc3", new, rng.normal(size=(2, DIM)).astype(np.float32))
    got = store.get_chunks("doc3")
    assert [(c.position, c.text) for c in got] == [(0, "new 0"), (1, "new 1")]
    assert store.count() == len(chunks) - PER_DOC + 2


def test_delete_and_absent(store):
    store.delete_chunks("doc5")
    assert store.get_chunks("doc5") == []
    assert store.get_chunks("never") == []
    assert store.count() == N_DOCS * PER_DOC - PER_DOC


@pytest.mark.parametrize("kind", ["edge", "local"])
def test_data_survives_reopening(kind, tmp_path):
    chunks, vecs = _data()
    s = _open(kind, tmp_path)
    s.upsert(chunks, vecs)
    before = [h.id for h in s.search(vecs[0], 5, exact=True)]
    s.close()
    s = _open(kind, tmp_path)
    try:
        assert s.count() == len(chunks)
        assert [h.id for h in s.search(vecs[0], 5, exact=True)] == before
    finally:
        s.close()


def test_concurrent_threads(store):
    """The deployment calls the store from worker threads: concurrent reads and writes must not fail."""
    from concurrent.futures import ThreadPoolExecutor

    chunks, vecs = _data(seed=3)

    def work(i):
        doc = f"doc{i % N_DOCS}"
        part = [c for c in chunks if c.document_id == doc]
        idx = [j for j, c in enumerate(chunks) if c.document_id == doc]
        store.replace_document(doc, part, vecs[idx])
        assert len(store.search(vecs[i], 5)) == 5
        return len(store.get_chunks(doc))

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(work, range(64))) == {PER_DOC}
    assert store.count() == N_DOCS * PER_DOC
