"""Bounded writes in the vector tier: metadata (key count, string value length, total JSON size) and search
filters are bounded by the settings, refused with a 400 naming the field before anything reaches the
VectorStore deployment; an ingest request over the chunk budget is refused with 413 before anything is
embedded or written; the deployment stores metadata once (in the document's record) and chunks documents
and rebuilds them in worker threads, never on its event loop; the rebuilt text is the same as before."""

import asyncio
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_app.config.settings import AppSettings, VectorSettings
from serve_app.errors import InvalidRequest, NotFound, PayloadTooLarge
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app
from serve_app.protocol.retrieval import SearchHit
from serve_app.vector.documents import rejoin
from serve_app.vector.limits import check_documents, check_filter, check_metadata, check_write_budget, metadata_bytes
from tests.fakes.handles import Method, Response

pytestmark = pytest.mark.unit

S = VectorSettings(max_metadata_keys=3, max_metadata_value_chars=10, max_metadata_bytes=256,
                   max_ingest_chunks_per_request=10)


def _refused(fn, *args):
    with pytest.raises((InvalidRequest, PayloadTooLarge)) as err:
        fn(*args)
    return err.value


# ------------------------------------------------------------------------------------------- the checks


def test_defaults_are_sane():
    s = VectorSettings()
    assert (s.max_metadata_keys, s.max_metadata_value_chars, s.max_metadata_bytes) == (32, 1024, 8 * 1024)
    assert s.max_filter_documents == 10_000 and s.max_ingest_chunks_per_request == 768


def test_metadata_bounds_name_the_field():
    check_metadata({"a": "x" * 10, "b": 1, "c": True}, S, "documents.0.metadata")
    err = _refused(check_metadata, {"title": "x" * 11}, S, "documents.3.metadata")
    assert isinstance(err, InvalidRequest) and err.param == "documents.3.metadata.title" and "10" in err.message
    err = _refused(check_metadata, {"a": 1, "b": 2, "c": 3, "d": 4}, S, "documents.3.metadata")
    assert err.param == "documents.3.metadata" and "4 keys" in err.message
    # Within the key count and the value length, over the total size (UTF-8 bytes of compact JSON).
    s = VectorSettings(max_metadata_value_chars=200, max_metadata_bytes=256)
    big = {"a": "é" * 100, "b": "é" * 100}
    assert metadata_bytes(big) > 256
    err = _refused(check_metadata, big, s, "documents.1.metadata")
    assert err.param == "documents.1.metadata" and "bytes" in err.message


def test_filter_has_metadatas_bounds():
    check_filter(None, S)
    check_filter({}, S)
    assert _refused(check_filter, {"k": "y" * 11}, S).param == "filter.k"
    assert _refused(check_filter, {"a": 1, "b": 2, "c": 3, "d": 4}, S).param == "filter"


def test_documents_as_a_whole():
    ok = {"id": "a", "text": "t", "metadata": {}}
    check_documents([ok, {**ok, "id": "b"}], S)
    assert _refused(check_documents, [ok, {**ok, "metadata": {"k": "v" * 11}, "id": "b"}], S).param == \
        "documents.1.metadata.k"
    assert _refused(check_documents, [ok, ok], S).param == "documents.1.id"
    err = _refused(check_documents, [{**ok, "text": "x" * (S.max_document_chars + 1)}], S)
    assert isinstance(err, PayloadTooLarge) and err.param == "documents.0.text"
    many = [{**ok, "id": str(i)} for i in range(S.max_documents_per_request + 1)]
    assert _refused(check_documents, many, S).param == "documents"


def test_write_budget():
    check_write_budget([4, 6], S)
    check_write_budget([], S)
    err = _refused(check_write_budget, [5, 6], S)
    assert isinstance(err, PayloadTooLarge) and err.param == "documents" and "11 chunks" in err.message
    err = _refused(check_write_budget, [1, 11], S)
    assert err.param == "documents.1.text" and "split the document" in err.message


# ------------------------------------------------------------------------------------------- the routes


class _VectorStore:
    """The VectorStore deployment's handle; records what reached it."""

    def __init__(self):
        self.calls = []
        self.ingest = Method(lambda docs, tenant: self.calls.append(("ingest", docs)) or
                             [{"id": d["id"], "chunks": 1} for d in docs])
        self.search = Method(lambda *a, tenant: self.calls.append(("search", a)) or [])


def _client(vector, **limits) -> TestClient:
    settings = AppSettings.model_validate({"model": {"enabled": False}, "vector": limits,
                                           "ingress": {"max_body_bytes": 4 << 20}})
    return TestClient(create_app(IngressContext.build(settings, None, vector)))


def _error(r, status):
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    return r.json()["error"]


def test_ingest_route_refuses_oversized_metadata_before_the_deployment():
    vector = _VectorStore()
    http = _client(vector)
    docs = [{"id": f"d{i}", "text": "t"} for i in range(3)]
    docs.append({"id": "d3", "text": "t", "metadata": {"title": "x" * 1025}})
    err = _error(http.post("/v1/documents", json={"documents": docs}), 400)
    assert err["param"] == "documents.3.metadata.title" and err["type"] == "invalid_request_error"
    many = {f"k{i}": i for i in range(33)}
    err = _error(http.post("/v1/documents", json={"documents": [{"id": "a", "text": "t", "metadata": many}]}), 400)
    assert err["param"] == "documents.0.metadata"
    assert vector.calls == []  # nothing was sent to be written
    r = http.post("/v1/documents", json={"documents": [{"id": "a", "text": "t", "metadata": {"title": "x" * 1024}}]})
    assert r.status_code == 200 and vector.calls[0][0] == "ingest"


def test_ingest_route_uses_the_configured_limits():
    vector = _VectorStore()
    http = _client(vector, max_metadata_value_chars=4, max_metadata_bytes=256)
    doc = {"id": "a", "text": "t", "metadata": {"k": "abcde"}}
    err = _error(http.post("/v1/documents", json={"documents": [doc]}), 400)
    assert err["param"] == "documents.0.metadata.k"
    err = _error(http.post("/v1/documents", json={"documents": [{"id": "a", "text": "t", "metadata": {
        f"k{i}": "abcd" for i in range(30)}}]}), 400)
    assert err["param"] == "documents.0.metadata" and "bytes" in err["message"]
    assert vector.calls == []


def test_search_route_bounds_the_filter():
    vector = _VectorStore()
    http = _client(vector)
    err = _error(http.post("/v1/search", json={"query": "q", "filter": {"title": "x" * 1025}}), 400)
    assert err["param"] == "filter.title"
    err = _error(http.post("/v1/search", json={"query": "q", "filter": {f"k{i}": 1 for i in range(33)}}), 400)
    assert err["param"] == "filter"
    assert vector.calls == []
    assert http.post("/v1/search", json={"query": "q", "filter": {"topic": "geo"}}).status_code == 200


# ------------------------------------------------------------------------------------------- the deployment


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from serve_app.vector.embedder import resolve_embedder

    return AutoTokenizer.from_pretrained(resolve_embedder("default"))


class _Embedder:
    """The Embedder deployment's handle: deterministic unit vectors, and how many texts it embedded."""

    def __init__(self, dim):
        self.dim, self.texts = dim, 0

    @property
    def embed(self):
        outer = self

        class _M:
            def remote(self, texts):
                outer.texts += len(texts)
                rng = np.random.default_rng(len(texts))
                v = rng.normal(size=(len(texts), outer.dim)).astype(np.float32)
                return Response(v / np.linalg.norm(v, axis=1, keepdims=True))

        return _M()


@pytest.fixture
def server(tmp_path, tokenizer):
    """A VectorStore replica's object without Ray: the class under the Serve decorator, on an edge store."""
    from serve_app.vector.deployment import VectorStoreServer, make_store
    from serve_app.vector.keywords import KeywordEncoder

    s = VectorSettings(path=tmp_path, chunk_tokens=20, chunk_overlap=5, max_ingest_chunks_per_request=8)
    obj = VectorStoreServer.func_or_class.__new__(VectorStoreServer.func_or_class)
    obj.s, obj.dim, obj.tokenizer, obj.embedder = s, 8, tokenizer, _Embedder(8)
    obj.keywords = KeywordEncoder()
    obj.store = make_store(s, obj.dim)
    obj._unindexed, obj._index_task = 0, None
    obj._write_lock, obj._chunk_lock = asyncio.Lock(), asyncio.Lock()
    yield obj
    obj.store.close()


def _words(n):
    return " ".join(f"word{i}" for i in range(n))


def test_ingest_over_the_budget_writes_nothing(server):
    docs = [{"id": "small", "text": _words(10), "metadata": {}}, {"id": "big", "text": _words(200), "metadata": {}}]
    with pytest.raises(PayloadTooLarge) as err:
        asyncio.run(server.ingest(docs, tenant=""))
    assert err.value.param == "documents.1.text"
    assert server.embedder.texts == 0 and server.store.count() == 0
    assert server.store.get_records("", ["small", "big"]) == {}


def test_a_failure_building_keyword_vectors_writes_nothing(server):
    class Broken:
        def documents(self, texts):
            raise RuntimeError("tokenizer failed")

    asyncio.run(server.ingest([{"id": "old", "text": _words(10), "metadata": {"v": 1}}], tenant=""))
    before = server.store.count()
    server.keywords = Broken()
    with pytest.raises(RuntimeError):
        asyncio.run(server.ingest([{"id": "old", "text": _words(30), "metadata": {"v": 2}},
                                   {"id": "new", "text": _words(10), "metadata": {}}], tenant=""))
    # The old version of "old" is whole, "new" was never written.
    assert server.store.count() == before and server.store.get_records("", ["old"])["old"].metadata == {"v": 1}
    assert server.store.get_records("", ["new"]) == {} and asyncio.run(server.get_document("old", tenant=""))["text"] == _words(10)


def test_ingest_stores_metadata_once_and_reads_it_back(server):
    meta = {"topic": "geo", "n": 3}
    out = asyncio.run(server.ingest([{"id": "a", "text": _words(40), "metadata": meta}], tenant=""))
    n = out[0]["chunks"]
    assert n > 1 and server.store.count() == n
    assert server.store.get_records("", ["a"])["a"].metadata == meta
    doc = asyncio.run(server.get_document("a", tenant=""))
    assert doc["metadata"] == meta and doc["text"] == _words(40)
    hits = server.store.search(np.ones(8, np.float32), 3, filter={"topic": "geo"}, exact=True)
    assert hits and all(h.metadata == meta for h in hits)
    # The deployment's search answers typed hits (they cross Ray as they are).
    typed = asyncio.run(server.search("word3", 3, {"topic": "geo"}, mode="keyword", tenant=""))
    assert typed and all(isinstance(h, SearchHit) and h.metadata == meta for h in typed)
    assert asyncio.run(server.delete_document("a", tenant=""))["chunks"] == n
    assert server.store.get_records("", ["a"]) == {}
    with pytest.raises(NotFound):
        asyncio.run(server.get_document("a", tenant=""))
    with pytest.raises(NotFound):
        asyncio.run(server.delete_document("a", tenant=""))


def test_the_deployment_checks_documents_and_filters_too(server):
    # The batch-ingest job and other deployments call the handle directly.
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(server.ingest([{"id": "a", "text": "t", "metadata": {"k": "v" * 1025}}], tenant=""))
    assert err.value.param == "documents.0.metadata.k" and server.store.count() == 0
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(server.search("q", 3, {"k": "v" * 1025}, tenant=""))
    assert err.value.param == "filter.k"


def test_chunking_and_rebuilding_run_off_the_event_loop(server):
    threads = {}

    def on_thread(name, fn):
        def wrapped(*args):
            threads[name] = threading.get_ident()
            return fn(*args)
        return wrapped

    server._chunk = on_thread("chunk", server._chunk)
    server._read_document = on_thread("read", server._read_document)

    async def run():
        loop = threading.get_ident()
        await server.ingest([{"id": "a", "text": _words(30), "metadata": {}}], tenant="")
        await server.get_document("a", tenant="")
        return loop

    loop = asyncio.run(run())
    assert set(threads) == {"chunk", "read"} and loop not in threads.values()


# ------------------------------------------------------------------------------------------- the rebuilt text


def _rejoin_before(texts):
    # The algorithm this replaced (character by character from the longest possible overlap).
    out = ""
    for t in texts:
        k = min(len(out), len(t))
        while k > 0 and not out.endswith(t[:k]):
            k -= 1
        out += t[k:] if k else ((" " if out else "") + t)
    return out


def test_rejoin_gives_the_same_text_as_before(tokenizer):
    from serve_app.vector.chunker import chunk_text

    rng = np.random.default_rng(0)
    alphabet = list("ab .") + ["lorem", "ipsum", "dolor"]
    for _ in range(200):
        texts = ["".join(rng.choice(alphabet, size=rng.integers(1, 30))) for _ in range(rng.integers(0, 6))]
        assert rejoin(texts) == _rejoin_before(texts), texts
    text = _words(500)
    chunks = [c.text for c in chunk_text("d", text, tokenizer, 50, 10)]
    assert rejoin(chunks) == _rejoin_before(chunks) == text


def test_a_documents_sections_give_each_chunk_its_place(server):
    sections = [{"text": _words(30), "page": 1, "section": None}, {"text": "glacier " * 5, "page": 2, "section": None}]
    doc = {"id": "f.pdf", "text": "\n\n".join(s["text"] for s in sections), "metadata": {}, "sections": sections}
    [out] = asyncio.run(server.ingest([doc], tenant="t"))
    # Each section chunked on its own: no chunk spans the two pages.
    view = asyncio.run(server.get_document("f.pdf", tenant="t"))
    pages = [c["page"] for c in view["chunks"]]
    assert out["chunks"] == len(pages) > 2 and pages == sorted(pages) and pages[-1] == 2
    assert all(c["text"].startswith("glacier") for c in view["chunks"] if c["page"] == 2)
    [hit] = asyncio.run(server.search("glacier", 1, mode="keyword", tenant="t"))
    assert (hit.page, hit.section) == (2, None)
    # The same file again: unchanged, nothing embedded.
    embedded = server.embedder.texts
    assert asyncio.run(server.ingest([doc], tenant="t"))[0]["unchanged"] and server.embedder.texts == embedded
    assert asyncio.run(server.search("glacier", 1, mode="keyword", tenant="other")) == []
