"""Tenants and versions in every vector-store backend: each tenant's documents reached only with its tenant, the
tenant condition inside the query (a tenant's top-k is never starved by another tenant's nearer chunks), the same
document id in two tenants kept apart; a replacement seen by searches as the old version or the new one, never a
mix and never neither; the same content again writes nothing; a write cut short is put right by the next one."""

import numpy as np
import pytest

from serve_app.vector.keywords import KeywordEncoder
from serve_app.vector.store import StoredChunk
from tests.unit.test_store_congruence import DIM, KINDS, _drop, _open

pytestmark = pytest.mark.unit

ENC = KeywordEncoder()


def _unit(rng, n):
    v = rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _chunks(doc, texts):
    return [StoredChunk("", doc, p, t) for p, t in enumerate(texts)]


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    s = _open(request.param, tmp_path)
    yield s
    _drop(s)


def _write(store, tenant, doc, texts, vectors, metadata=None):
    return store.replace_document(doc, _chunks(doc, texts), vectors, metadata or {}, ENC.documents(texts),
                                  tenant=tenant)


def test_each_tenant_sees_only_its_own_documents_in_every_mode(store):
    rng = np.random.default_rng(0)
    q = _unit(rng, 1)[0]
    # Tenant "b": 30 documents right next to the query, all saying "glacier"; tenant "a": 3 far ones.
    near = q + 0.01 * _unit(rng, 30)
    for i in range(30):
        _write(store, "b", f"b{i}", [f"glacier report {i}"], near[i:i + 1], {"team": "x"})
    for i in range(3):
        _write(store, "a", f"a{i}", [f"glacier notes {i}"], _unit(rng, 1), {"team": "x"})
    # The same document id in both tenants: two documents.
    _write(store, "a", "shared", ["alpha's glacier"], _unit(rng, 1))
    _write(store, "b", "shared", ["beta's glacier"], near[:1])
    sparse = ENC.query("glacier")
    for kwargs in ({"mode": "dense"}, {"mode": "keyword"}, {"mode": "hybrid"}, {"filter": {"team": "x"}}):
        hits = store.search(q if kwargs.get("mode") != "keyword" else None, 4, sparse=sparse, exact=True,
                            tenant="a", **kwargs)
        # The tenant's own top-k, filled: the condition is in the query, not applied to b's hits afterwards.
        assert len(hits) == (3 if "filter" in kwargs else 4) and all(h.tenant == "a" for h in hits), kwargs
        assert "beta's glacier" not in {h.text for h in hits}
    assert store.search(q, 50, tenant="nobody") == []
    assert store.document_chunks("a", "shared")[1][0].text == "alpha's glacier"
    assert store.document_chunks("a", "b1") is None
    assert sorted(store.find_records("a", {"team": "x"}, 100)) == ["a0", "a1", "a2"]
    # A delete with another tenant deletes nothing.
    assert store.delete_document("a", "b1") == 0 and store.document_chunks("b", "b1") is not None
    assert store.delete_document("b", "shared") == 1
    assert store.document_chunks("a", "shared") is not None and store.document_chunks("b", "shared") is None
    assert store.tenants() == {"a": 4, "b": 30}


def test_listing_pages_through_one_tenants_documents(store):
    rng = np.random.default_rng(1)
    for t, n in (("a", 7), ("b", 3)):
        for i in range(n):
            _write(store, t, f"{t}{i}", [f"text {i}"], _unit(rng, 1), {"i": i})
    seen, after = [], None
    while True:
        page = store.list_records("a", 3, after)
        if not page:
            break
        seen += [r.document_id for r in page]
        after = page[-1].document_id
    assert sorted(seen) == [f"a{i}" for i in range(7)] and len(seen) == 7


def test_a_replacement_is_seen_whole_or_not_at_all(store):
    """Searches run between every store write of a replacement (and of a delete): each sees the old version's
    chunks or the new one's."""
    rng = np.random.default_rng(2)
    old, new = ["harbour one", "harbour two", "harbour three"], ["harbour new one", "harbour new two"]
    _write(store, "t", "doc", old, _unit(rng, 3))
    _write(store, "t", "other", ["harbour elsewhere"], _unit(rng, 1))
    seen = []

    def look():
        for mode in ("dense", "keyword", "hybrid"):
            vector = None if mode == "keyword" else np.ones(DIM, np.float32)
            hits = store.search(vector, 20, mode=mode, sparse=ENC.query("harbour"), exact=True, tenant="t")
            seen.append(frozenset(h.text for h in hits if h.document_id == "doc"))

    for name in ("upsert", "put_record", "delete_chunks", "delete_record"):
        original = getattr(store, name)

        def spy(*args, _original=original, **kwargs):
            out = _original(*args, **kwargs)
            look()
            return out

        setattr(store, name, spy)
    assert _write(store, "t", "doc", new, _unit(rng, 2))
    assert seen and set(seen) <= {frozenset(old), frozenset(new)} and frozenset(new) in seen
    assert [c.text for c in store.document_chunks("t", "doc")[1]] == new
    seen.clear()
    store.delete_document("t", "doc")
    assert seen and set(seen) <= {frozenset(new), frozenset()} and seen[-1] == frozenset()
    assert store.count() == 1


def test_the_same_content_again_writes_nothing(store):
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 2)
    assert _write(store, "t", "doc", ["one", "two"], vectors, {"v": 1})
    ids = [c.id for c in store.document_chunks("t", "doc")[1]]
    assert not _write(store, "t", "doc", ["one", "two"], vectors, {"v": 1})
    assert [c.id for c in store.document_chunks("t", "doc")[1]] == ids
    # Other metadata is another version.
    assert _write(store, "t", "doc", ["one", "two"], vectors, {"v": 2})
    assert store.record("t", "doc").metadata == {"v": 2} and store.count() == 2


def test_a_write_cut_short_leaves_the_old_version_and_is_put_right(store):
    rng = np.random.default_rng(4)
    _write(store, "t", "doc", ["old text"], _unit(rng, 1))
    upsert = store.upsert

    def crash(chunks, vectors, sparse=None):
        upsert(chunks[:1], vectors[:1], sparse[:1] if sparse else None)  # part of the new chunks written
        raise RuntimeError("killed")

    store.upsert = crash
    with pytest.raises(RuntimeError):
        _write(store, "t", "doc", ["new a", "new b"], _unit(rng, 2))
    store.upsert = upsert
    hits = store.search(np.ones(DIM, np.float32), 10, exact=True, tenant="t")
    assert [h.text for h in hits] == ["old text"]
    assert [c.text for c in store.document_chunks("t", "doc")[1]] == ["old text"]
    # The next write of the document removes what the cut-short one left.
    _write(store, "t", "doc", ["newest"], _unit(rng, 1))
    assert store.count() == 1 and [c.text for c in store.document_chunks("t", "doc")[1]] == ["newest"]


def test_hiding_is_per_document_and_stray_versions_are_never_hits(store):
    """Documents migrated from before versions share the version "legacy": writing one hides its own legacy
    chunks only. Chunks of a version that is not their document's live one never come back as hits."""
    rng = np.random.default_rng(5)
    for doc in ("one", "two"):
        store.replace_document(doc, _chunks(doc, [f"harbour {doc}"]), _unit(rng, 1), {}, tenant="t", version="legacy")
    seen = []
    upsert = store.upsert

    def spy(*args, **kwargs):
        upsert(*args, **kwargs)
        seen.append({h.document_id for h in store.search(None, 10, mode="keyword", sparse=ENC.query("harbour"),
                                                         tenant="t")})

    store.upsert = spy
    _write(store, "t", "one", ["harbour one again"], _unit(rng, 1))
    assert seen == [{"one", "two"}]
    store.upsert = upsert
    # A stray chunk of another version of "two" (as a concurrent write would leave for a moment).
    store.upsert([StoredChunk("5f0c4a52-6a4e-4c8e-9a8e-2b1f1c0de0ff", "two", 1, "harbour stray", "t", "other")],
                 _unit(rng, 1))
    assert "harbour stray" not in {h.text for h in store.search(np.ones(DIM, np.float32), 10, exact=True, tenant="t")}


def test_the_same_content_again_puts_right_a_write_cut_short_after_its_switch(store):
    rng = np.random.default_rng(6)
    _write(store, "t", "doc", ["old one", "old two"], _unit(rng, 2))
    delete = store.delete_chunks

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    store.delete_chunks = crash  # the new version is live, the old chunks not yet deleted
    with pytest.raises(RuntimeError):
        _write(store, "t", "doc", ["new"], _unit(rng, 1))
    store.delete_chunks = delete
    assert store.count() == 3 and store.pending_records("t", 10)
    assert [h.text for h in store.search(np.ones(DIM, np.float32), 10, exact=True, tenant="t")] == ["new"]
    assert not _write(store, "t", "doc", ["new"], _unit(rng, 1))  # the same content: nothing new written
    assert store.count() == 1 and store.pending_records("t", 10) == []


def test_a_delete_naming_a_version_deletes_only_that_version(store):
    rng = np.random.default_rng(7)
    _write(store, "t", "doc", ["first"], _unit(rng, 1))
    version = store.record("t", "doc").version
    _write(store, "t", "doc", ["second"], _unit(rng, 1))
    assert store.delete_document("t", "doc", version) == 0 and store.document_chunks("t", "doc") is not None
    assert store.delete_document("t", "doc", store.record("t", "doc").version) == 1
    assert store.document_chunks("t", "doc") is None
