"""Every vector-store backend behaves the same: exact top-k, filters, replacement, deletion, reopening; metadata
stored once, in the record (filters resolved against the records first); keyword (BM25) and hybrid (RRF) searches
ranked alike, filters on both prefetches, stop-word queries refused (400). Tenants and versions:
test_store_tenants.py. A Qdrant server is never mocked: SERVE_APP_TEST_QDRANT_URL runs these on one too."""

import os
import uuid
from itertools import pairwise

import numpy as np
import pytest

from serve_app.errors import InvalidRequest
from serve_app.vector.chunker import chunk_id
from serve_app.vector.edge_store import QdrantEdgeStore
from serve_app.vector.keywords import KeywordEncoder
from serve_app.vector.qdrant_client_store import QdrantClientStore
from serve_app.vector.store import RRF_K, FilterTooBroad, StoredChunk

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
    return [_key(chunks[i]) for i in order], [float(scores[i]) for i in order]


def _key(c):  # a chunk across writes (its id derives from the document's version too)
    return (c.document_id, c.position)


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
        assert [_key(h) for h in hits] == ids
        assert np.allclose([h.score for h in hits], scores, atol=1e-4)
        assert all(h.text and h.document_id for h in hits)
        # Each hit carries its document's metadata, read from the record.
        assert all(h.metadata == _meta(_doc(h)) for h in hits)


def test_filter_and_threshold(store):
    chunks, vecs = _data()
    q = vecs[7]
    hits = store.search(q, 8, filter={"group": 2, "lang": "de"}, exact=True)  # "de": the even documents
    ids, _ = _exact(vecs, chunks, q, 8, keep=lambda c: _meta(_doc(c))["group"] == 2 and _doc(c) % 2 == 0)
    assert [_key(h) for h in hits] == ids and ids
    assert all(h.metadata["group"] == 2 for h in hits)
    # A number with a fraction (exact match in the stores is for keywords, integers and booleans).
    hits = store.search(q, 8, filter={"weight": 1.25, "lang": "de"}, exact=True)
    ids, _ = _exact(vecs, chunks, q, 8, keep=lambda c: _meta(_doc(c))["weight"] == 1.25 and _doc(c) % 2 == 0)
    assert [_key(h) for h in hits] == ids and ids
    assert store.search(q, 8, filter={"lang": "fr"}, exact=True) == []
    top = store.search(q, 5, score_threshold=0.999, exact=True)
    assert [_key(h) for h in top] == [_key(chunks[7])]


def test_metadata_is_stored_once_per_document(store):
    payloads = _chunk_payloads(store)
    assert len(payloads) == N_DOCS * PER_DOC
    assert all(set(p) == {"tenant", "document_id", "version", "position", "text"} for p in payloads)
    records = store.get_records("", [f"doc{d}" for d in range(N_DOCS)] + ["never"])
    assert {d: (r.metadata, r.chunks) for d, r in records.items()} == {
        f"doc{d}": (_meta(d), PER_DOC) for d in range(N_DOCS)}
    assert store.get_records("", []) == {}
    assert store.count() == N_DOCS * PER_DOC  # records are not chunks


def test_filter_is_bounded_by_the_documents_it_matches(store):
    _, vecs = _data()
    # "lang": "de" matches 20 documents.
    assert len(store.search(vecs[0], 3, filter={"lang": "de"}, max_filter_documents=20)) == 3
    with pytest.raises(FilterTooBroad) as err:
        store.search(vecs[0], 3, filter={"lang": "de"}, max_filter_documents=19)
    assert err.value.param == "filter" and "narrow" in err.value.message
    assert sorted(store.find_records("", {"group": 1}, 100)) == sorted(f"doc{d}" for d in range(N_DOCS) if d % 4 == 1)
    assert len(store.find_records("", {"group": 1}, 3)) == 3


def test_replace_leaves_no_duplicates_or_leftovers(store):
    chunks, vecs = _data()
    rng = np.random.default_rng(2)
    new = [StoredChunk(chunk_id("doc3", p), "doc3", p, f"new {p}") for p in range(2)]
    store.replace_document("doc3", new, rng.normal(size=(2, DIM)).astype(np.float32), {"group": 9})
    _, got = store.document_chunks("", "doc3")
    assert [(c.position, c.text) for c in got] == [(0, "new 0"), (1, "new 1")]
    assert store.count() == len(chunks) - PER_DOC + 2
    # The record follows: new metadata and chunk count; the old metadata no longer matches.
    record = store.get_records("", ["doc3"])["doc3"]
    assert (record.metadata, record.chunks) == ({"group": 9}, 2)
    assert {h.document_id for h in store.search(vecs[15], 50, filter={"group": 9}, exact=True)} == {"doc3"}
    assert "doc3" not in {h.document_id for h in store.search(vecs[15], 50, filter={"group": 3}, exact=True)}


def test_delete_and_absent(store):
    _, vecs = _data()
    store.delete_document("", "doc5")
    assert store.document_chunks("", "doc5") is None
    assert store.get_records("", ["doc5"]) == {}
    assert "doc5" not in store.find_records("", {"group": 1}, 100)
    assert "doc5" not in {h.document_id for h in store.search(vecs[25], 50, exact=True)}
    assert store.document_chunks("", "never") is None
    store.delete_document("", "never")  # absent: nothing to do, no error
    assert store.count() == N_DOCS * PER_DOC - PER_DOC


@pytest.mark.parametrize("kind", KINDS)
def test_data_survives_reopening(kind, tmp_path):
    chunks, vecs = _data()
    s = _open(kind, tmp_path)
    _load(s, chunks, vecs)
    before = [_key(h) for h in s.search(vecs[0], 5, exact=True)]
    s.close()
    s = _open(kind, tmp_path)
    try:
        assert s.count() == len(chunks)
        assert [_key(h) for h in s.search(vecs[0], 5, exact=True)] == before
        assert s.get_records("", ["doc1"])["doc1"].metadata == _meta(1)
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
        return len(store.document_chunks("", f"doc{d}")[1])

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(work, range(64))) == {PER_DOC}
    assert store.count() == N_DOCS * PER_DOC


# -- keyword and hybrid search -----------------------------------------------------------------------------

ENC = KeywordEncoder()
# One chunk per text; "zeppelin" is in one document only, "harbour" in several.
KW_TEXTS = {
    "kw0": ["The harbour was quiet at dawn", "Fishing boats left the harbour early"],
    "kw1": ["A zeppelin drifted over the harbour", "Airships need hydrogen or helium"],
    "kw2": ["Bread rises when the yeast is warm", "Sourdough needs a starter and patience"],
    "kw3": ["The harbour master counted the boats", "Boats and ships and more boats"],
    "kw4": ["Helium is lighter than air", "Balloons rise in cold morning air"],
    "kw5": ["Patience is a virtue of bakers", "Warm bread at dawn in the harbour town"],
}


def _kw_data():
    chunks = [StoredChunk(chunk_id(d, p), d, p, t) for d, texts in KW_TEXTS.items() for p, t in enumerate(texts)]
    vecs = np.random.default_rng(7).normal(size=(len(chunks), DIM))
    return chunks, (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def _kw_meta(d):
    return {"parity": "odd" if int(d.removeprefix("kw")) % 2 else "even"}


@pytest.fixture(params=KINDS)
def kw_store(request, tmp_path):
    _kw_load(s := _open(request.param, tmp_path))
    yield s
    _drop(s)


def _kw_load(s):
    chunks, vecs = _kw_data()
    for i, d in enumerate(KW_TEXTS):  # two chunks per document
        picked = chunks[2 * i : 2 * i + 2]
        s.replace_document(d, picked, vecs[2 * i : 2 * i + 2], _kw_meta(d), ENC.documents([c.text for c in picked]))


def _keyword(store, text, k=20, **kw):
    return store.search(None, k, mode="keyword", sparse=ENC.query(text), **kw)


def _rrf(*rankings):
    """Reference reciprocal rank fusion (score = sum of 1 / (k + rank), rank from 0) of id rankings."""
    scores = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking):
            scores[i] = scores.get(i, 0.0) + 1.0 / (RRF_K + rank)
    return scores


def _groups(hits):
    """Hits as the sequence of their sets of equal score: the order that is defined whatever the backend
    does with ties."""
    out = []
    for h in hits:
        if out and abs(out[-1][0] - h.score) < 1e-5:
            out[-1][1].add(_key(h))
        else:
            out.append((h.score, {_key(h)}))
    return [ids for _, ids in out]


def test_keyword_search_ranks_the_rare_word_first(kw_store):
    chunks, _ = _kw_data()
    hits = _keyword(kw_store, "zeppelin")
    assert [_key(h) for h in hits] == [("kw1", 0)]  # the only chunk with the word
    assert hits[0].metadata == _kw_meta("kw1") and hits[0].text.startswith("A zeppelin")
    # A common word and a rare one: the chunk with both first, then the chunks with the common word only.
    hits = _keyword(kw_store, "zeppelin harbour")
    assert _key(hits[0]) == ("kw1", 0)
    assert {_key(h) for h in hits} == {_key(c) for c in chunks if "harbour" in c.text.lower()}
    assert all(a.score >= b.score > 0 for a, b in pairwise(hits))
    # Stemming: "boat" finds "boats"; a chunk saying it three times ranks first.
    assert _key(_keyword(kw_store, "boat")[0]) == ("kw3", 1)


def test_keyword_search_of_stop_words_is_refused(kw_store):
    with pytest.raises(InvalidRequest) as err:
        _keyword(kw_store, "the and of it")
    assert err.value.param == "query" and "only stop words" in err.value.message
    # The primitive answers empty; search (every caller's way in) refuses.
    assert kw_store.search_chunks("", None, 5, mode="keyword", sparse=ENC.query("the")) == []
    refused = ({"mode": "semantic"}, "mode"), ({"mode": "keyword", "score_threshold": 0.1}, "score_threshold")
    for wrong, param in refused:
        with pytest.raises(InvalidRequest) as err:
            kw_store.search(None, 5, sparse=ENC.query("boat"), **wrong)
        assert err.value.param == param


def test_hybrid_is_the_rank_fusion_of_dense_and_keyword(kw_store):
    chunks, vecs = _kw_data()
    q, text, n = vecs[6], "harbour patience", 5  # vecs[6]: a chunk of kw3, far from "patience"
    dense_ids, _ = _exact(vecs, chunks, q, n)
    keyword_ids = [_key(h) for h in _keyword(kw_store, text, n)]
    hits = kw_store.search(q, n, mode="hybrid", sparse=ENC.query(text), candidates=n, exact=True)
    # The top of the union of the two prefetches (each `candidates` long), ranked by the fused score.
    _assert_fused(hits, _rrf(dense_ids, keyword_ids), n)
    # In both lists beats either list alone.
    both = set(dense_ids) & set(keyword_ids)
    assert both and {_key(h) for h in hits[: len(both)]} == both
    assert all(h.metadata == _kw_meta(h.document_id) for h in hits)
    # top_k cuts the fused ranking.
    assert [_key(h) for h in kw_store.search(q, 3, mode="hybrid", sparse=ENC.query(text), candidates=n,
                                          exact=True)] == [_key(h) for h in hits[:3]]
    # Each prefetch is never shorter than top_k: asking for more hits than candidates fuses longer lists.
    wide = kw_store.search(q, 2 * n, mode="hybrid", sparse=ENC.query(text), candidates=n, exact=True)
    dense_ids, _ = _exact(vecs, chunks, q, 2 * n)
    _assert_fused(wide, _rrf(dense_ids, [_key(h) for h in _keyword(kw_store, text, 2 * n)]), 2 * n)


def _assert_fused(hits, expected, k):
    """``hits`` are the top ``k`` of the reference fusion ``expected`` (by score: ties come in any order)."""
    assert len(hits) == min(k, len(expected)) and {_key(h) for h in hits} <= set(expected)
    assert [h.score for h in hits] == pytest.approx(sorted(expected.values(), reverse=True)[:k], abs=1e-6)
    assert all(h.score == pytest.approx(expected[_key(h)], abs=1e-6) for h in hits)


def test_hybrid_of_stop_words_is_dense_alone(kw_store):
    chunks, vecs = _kw_data()
    dense_ids, _ = _exact(vecs, chunks, vecs[3], 4)
    hits = kw_store.search(vecs[3], 4, mode="hybrid", sparse=ENC.query("the of"), exact=True)
    assert [_key(h) for h in hits] == dense_ids
    assert [h.score for h in hits] == pytest.approx([1.0 / (RRF_K + r) for r in range(4)], abs=1e-6)


def test_dense_search_is_unchanged_by_keyword_vectors(kw_store):
    chunks, vecs = _kw_data()
    for q in vecs[:4]:
        hits = kw_store.search(q, 5, exact=True)
        ids, scores = _exact(vecs, chunks, q, 5)
        assert [_key(h) for h in hits] == ids and np.allclose([h.score for h in hits], scores, atol=1e-4)
        assert [_key(h) for h in kw_store.search(q, 5, mode="dense", exact=True)] == ids


def test_filters_restrict_keyword_and_hybrid(kw_store):
    chunks, vecs = _kw_data()
    even = {"parity": "even"}
    # "zeppelin" is only in kw1 (odd): nothing among the even documents.
    assert _keyword(kw_store, "zeppelin", filter=even) == []
    hits = _keyword(kw_store, "harbour", filter=even)

    def keep(c):
        return _kw_meta(c.document_id) == even
    assert {_key(h) for h in hits} == {_key(c) for c in chunks if "harbour" in c.text.lower() and keep(c)}
    # Hybrid: both prefetches filtered, so every hit is an even document's, fused from the filtered rankings.
    q, text, n = vecs[2], "harbour boats", 4
    dense_ids, _ = _exact(vecs, chunks, q, n, keep=keep)
    keyword_ids = [_key(h) for h in _keyword(kw_store, text, n, filter=even)]
    hits = kw_store.search(q, n, filter=even, mode="hybrid", sparse=ENC.query(text), candidates=n, exact=True)
    assert all(h.metadata == even for h in hits)
    _assert_fused(hits, _rrf(dense_ids, keyword_ids), n)
    assert kw_store.search(q, 5, filter={"parity": "none"}, mode="hybrid", sparse=ENC.query(text)) == []


def test_keyword_search_follows_replacement_and_deletion(kw_store):
    chunks, vecs = _kw_data()
    new = [StoredChunk(("kw4", 0), "kw4", 0, "A second zeppelin landed")]
    kw_store.replace_document("kw4", new, vecs[:1], _kw_meta("kw4"))  # keyword vectors computed by the store
    assert {h.document_id for h in _keyword(kw_store, "zeppelin")} == {"kw1", "kw4"}
    assert not any(h.document_id == "kw4" for h in _keyword(kw_store, "balloons"))  # the old chunk 1 is gone
    kw_store.delete_document("", "kw1")
    assert [h.document_id for h in _keyword(kw_store, "zeppelin")] == ["kw4"]


def test_keyword_and_hybrid_agree_across_backends(tmp_path):
    """Same corpus, same queries: the same hits in the same order, with the same scores (IDF from Qdrant's
    live statistics on each backend); where scores tie, the same set at that rank."""
    _, vecs = _kw_data()
    stores = [_open(kind, tmp_path / kind) for kind in ("edge", "local")]
    try:
        for s in stores:
            _kw_load(s)
        for text in ("zeppelin harbour", "boats", "warm bread at dawn", "helium air balloons", "patience"):
            runs = [_keyword(s, text) for s in stores]
            assert _groups(runs[0]) == _groups(runs[1]) and runs[0]
            assert [h.score for h in runs[0]] == pytest.approx([h.score for h in runs[1]], rel=1e-5)
            runs = [s.search(vecs[5], 6, mode="hybrid", sparse=ENC.query(text), exact=True) for s in stores]
            assert _groups(runs[0]) == _groups(runs[1])
            assert [h.score for h in runs[0]] == pytest.approx([h.score for h in runs[1]], abs=1e-6)
    finally:
        for s in stores:
            _drop(s)
