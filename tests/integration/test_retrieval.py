"""Retrieval through the HTTP API: ingest is idempotent by id (re-ingest replaces, no duplicates or
leftovers), documents can be read and deleted, search ranks the relevant chunk first and honours top_k,
filters and thresholds, /v1/embeddings answers the unmodified openai SDK, and bad input is refused whole
with a 4xx error body."""

import math

import pytest

pytestmark = pytest.mark.app

DOCS = [
    {"id": "paris", "text": "Paris is the capital and largest city of France, on the river Seine.", "metadata": {"topic": "geo", "lang": "en"}},
    {"id": "python", "text": "Python is a programming language known for readable syntax and a large standard library.", "metadata": {"topic": "code", "lang": "en"}},
    {"id": "bread", "text": "Sourdough bread rises with wild yeast and lactic acid bacteria over many hours.", "metadata": {"topic": "food", "lang": "en"}},
]


@pytest.fixture(scope="module")
def ingested(http):
    r = http.post("/v1/documents", json={"documents": DOCS})
    assert r.status_code == 200, r.text
    return {d["id"]: d["chunks"] for d in r.json()["documents"]}


def test_ingest_reports_chunks(ingested):
    assert ingested == {"paris": 1, "python": 1, "bread": 1}


def test_long_document_is_chunked_and_readable(http):
    text = " ".join(f"Sentence number {i} talks about lighthouses and the sea." for i in range(200))
    r = http.post("/v1/documents", json={"documents": [{"id": "long", "text": text, "metadata": {"topic": "sea"}}]})
    n = r.json()["documents"][0]["chunks"]
    assert n > 5
    doc = http.get("/v1/documents/long").json()
    assert [c["position"] for c in doc["chunks"]] == list(range(n))
    assert doc["metadata"] == {"topic": "sea"}
    assert doc["text"].startswith("Sentence number 0") and doc["text"].endswith("the sea.")


def test_reingest_replaces_without_leftovers(http):
    text = " ".join(f"Old paragraph {i} about castles and moats." for i in range(150))
    first = http.post("/v1/documents", json={"documents": [{"id": "castle", "text": text}]}).json()["documents"][0]["chunks"]
    again = http.post("/v1/documents", json={"documents": [{"id": "castle", "text": text}]}).json()["documents"][0]["chunks"]
    assert first == again > 2
    r = http.post("/v1/documents", json={"documents": [{"id": "castle", "text": "A short note on windmills."}]})
    assert r.json()["documents"][0]["chunks"] == 1
    doc = http.get("/v1/documents/castle").json()
    assert [c["text"] for c in doc["chunks"]] == ["A short note on windmills."]
    hits = http.post("/v1/search", json={"query": "castles and moats", "top_k": 50}).json()["results"]
    assert not any("castles" in h["text"] for h in hits)
    ids = [h["chunk_id"] for h in hits]
    assert len(ids) == len(set(ids))


def test_search_ranks_relevant_first(http, ingested):
    r = http.post("/v1/search", json={"query": "What is the capital of France?", "top_k": 2})
    assert r.status_code == 200
    hits = r.json()["results"]
    assert len(hits) == 2 and hits[0]["document_id"] == "paris"
    assert hits[0]["score"] >= hits[1]["score"]
    assert set(hits[0]) == {"document_id", "chunk_id", "position", "text", "score", "metadata", "page", "section"}
    assert hits[0]["page"] is None and hits[0]["section"] is None  # a plain document has no place


def test_search_modes_dense_keyword_and_hybrid(http, ingested):
    # "lactic" appears in one document only: keyword search (BM25) finds it by the word; every mode ranks it first
    # for a question about it, and the filter applies to every mode.
    for mode in ("dense", "keyword", "hybrid"):
        r = http.post("/v1/search", json={"query": "lactic acid in bread", "top_k": 3, "mode": mode})
        assert r.status_code == 200, (mode, r.text)
        assert r.json()["results"][0]["document_id"] == "bread", mode
        r = http.post("/v1/search", json={"query": "lactic acid in bread", "top_k": 3, "mode": mode,
                                          "filter": {"topic": "geo"}})
        assert {h["document_id"] for h in r.json()["results"]} <= {"paris"}, mode
    keyword = http.post("/v1/search", json={"query": "lactic", "top_k": 5, "mode": "keyword"}).json()["results"]
    assert [h["document_id"] for h in keyword] == ["bread"]  # BM25 scores only documents with the word


def test_search_filter_and_threshold(http, ingested):
    hits = http.post("/v1/search", json={"query": "capital of France", "top_k": 5, "filter": {"topic": "food"}}).json()["results"]
    assert hits and all(h["metadata"]["topic"] == "food" for h in hits)
    hits = http.post("/v1/search", json={"query": "capital of France", "top_k": 5, "score_threshold": 0.99}).json()["results"]
    assert hits == []


def test_get_and_delete(http):
    # Ids may contain '/' (the ingest job uses relative file paths).
    http.post("/v1/documents", json={"documents": [{"id": "notes/a.md", "text": "A note in a folder."}]})
    assert http.get("/v1/documents/notes/a.md").json()["id"] == "notes/a.md"
    http.post("/v1/documents", json={"documents": [{"id": "tmp1", "text": "Temporary document."}]})
    assert http.get("/v1/documents/tmp1").json()["id"] == "tmp1"
    r = http.delete("/v1/documents/tmp1")
    assert r.status_code == 200 and r.json()["deleted"] is True
    for method in (http.get, http.delete):
        r = method("/v1/documents/tmp1")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_embeddings_with_openai_sdk(client):
    one = client.embeddings.create(model="all-MiniLM-L6-v2", input="hello world")  # SDK asks for base64
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert math.isclose(sum(x * x for x in one.data[0].embedding), 1.0, rel_tol=1e-3)
    many = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat", "a dog", "a car"], encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.usage.prompt_tokens > 0


def test_embeddings_match_in_process_encoder(http):
    from serve_app.vector.embedder import Embedder

    served = http.post("/v1/embeddings", json={"input": ["a quiet lake"], "encoding_format": "float"}).json()["data"][0]["embedding"]
    local = Embedder().encode(["a quiet lake"])[0]
    assert max(abs(a - b) for a, b in zip(served, local, strict=True)) < 1e-4


BAD = [
    ("empty-text", "/v1/documents", {"documents": [{"id": "x", "text": ""}]}, 400),
    ("blank-text", "/v1/documents", {"documents": [{"id": "x", "text": "  \n "}]}, 400),
    ("non-string-id", "/v1/documents", {"documents": [{"id": 5, "text": "t"}]}, 400),
    ("no-documents", "/v1/documents", {"documents": []}, 400),
    ("too-many-documents", "/v1/documents", {"documents": [{"id": f"d{i}", "text": "t"} for i in range(65)]}, 400),
    ("duplicate-ids", "/v1/documents", {"documents": [{"id": "d", "text": "t"}, {"id": "d", "text": "u"}]}, 400),
    ("nested-metadata", "/v1/documents", {"documents": [{"id": "x", "text": "t", "metadata": {"a": {"b": 1}}}]}, 400),
    ("oversized-document", "/v1/documents", {"documents": [{"id": "x", "text": "a" * 1_000_001}]}, 413),
    ("top-k-zero", "/v1/search", {"query": "q", "top_k": 0}, 400),
    ("top-k-huge", "/v1/search", {"query": "q", "top_k": 10**9}, 400),
    ("invalid-filter", "/v1/search", {"query": "q", "filter": {"topic": ["a", "b"]}}, 400),
    ("filter-not-object", "/v1/search", {"query": "q", "filter": "topic=geo"}, 400),
    ("blank-query", "/v1/search", {"query": "   "}, 400),
    ("threshold-out-of-range", "/v1/search", {"query": "q", "score_threshold": 7}, 400),
    ("unknown-mode", "/v1/search", {"query": "q", "mode": "fuzzy"}, 400),
    ("stop-words-only-keyword-query", "/v1/search", {"query": "the of and", "mode": "keyword"}, 400),
    ("threshold-in-hybrid-mode", "/v1/search", {"query": "q", "mode": "hybrid", "score_threshold": 0.5}, 400),
    ("embeddings-empty", "/v1/embeddings", {"input": []}, 400),
    ("embeddings-empty-string", "/v1/embeddings", {"input": ""}, 400),
    ("embeddings-unknown-model", "/v1/embeddings", {"input": "x", "model": "nope"}, 404),
    ("embeddings-wrong-dimensions", "/v1/embeddings", {"input": "x", "dimensions": 12}, 400),
    ("embeddings-token-arrays", "/v1/embeddings", {"input": [[1, 2, 3]]}, 400),
]


@pytest.mark.parametrize("path, body, status", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_retrieval_input(http, path, body, status):
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_document_refuses_whole_request(http):
    r = http.post("/v1/documents", json={"documents": [{"id": "good-one", "text": "fine"}, {"id": "bad-one", "text": " "}]})
    assert r.status_code == 400
    assert http.get("/v1/documents/good-one").status_code == 404


def test_health_reports_vector_tier(http, ingested):
    comps = http.get("/healthz").json()["components"]
    assert comps["vector"]["status"] == "ok" and comps["vector"]["chunks"] >= 3
    assert comps["embedder"]["status"] == "ok" and comps["embedder"]["dim"] == 384
