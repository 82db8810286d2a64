"""Bounded writes through the HTTP API, with the default limits: metadata over its bounds (a string value
longer than vector.max_metadata_value_chars, more keys than vector.max_metadata_keys) is refused with a 400
naming the field, a request over the chunk budget (vector.max_ingest_chunks_per_request) with a 413, and a
refused request writes nothing; metadata stored once per document still comes back with every search hit
and with the document, and metadata filters still select by it."""

import uuid

import pytest

pytestmark = pytest.mark.app

RUN = uuid.uuid4().hex[:8]  # ids and metadata of this run only: the session app is shared


def _error(r, status):
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    return r.json()["error"]


def test_oversized_metadata_value_is_refused_naming_the_field(http):
    docs = [{"id": f"bw-{RUN}-ok", "text": "A short note about harbours."},
            {"id": f"bw-{RUN}-long", "text": "A short note.", "metadata": {"title": "x" * 1025}}]
    err = _error(http.post("/v1/documents", json={"documents": docs}), 400)
    assert err["param"] == "documents.1.metadata.title" and "1024" in err["message"]
    for d in docs:
        assert http.get(f"/v1/documents/{d['id']}").status_code == 404


def test_too_many_metadata_keys_are_refused(http):
    metadata = {f"k{i}": i for i in range(33)}
    doc = {"id": f"bw-{RUN}-keys", "text": "A short note.", "metadata": metadata}
    err = _error(http.post("/v1/documents", json={"documents": [doc]}), 400)
    assert err["param"] == "documents.0.metadata" and "33 keys" in err["message"]
    err = _error(http.post("/v1/search", json={"query": "note", "filter": metadata}), 400)
    assert err["param"] == "filter"


def test_ingest_over_the_write_budget_writes_nothing(http):
    # Every '.' is a token of its own: 900 000 tokens are thousands of chunks, over the default 768.
    docs = [{"id": f"bw-{RUN}-small", "text": "A small note on tides."},
            {"id": f"bw-{RUN}-huge", "text": "." * 900_000}]
    err = _error(http.post("/v1/documents", json={"documents": docs}), 413)
    assert err["param"] == "documents.1.text" and "chunks" in err["message"]
    for d in docs:
        assert http.get(f"/v1/documents/{d['id']}").status_code == 404


def test_metadata_comes_back_with_hits_and_documents_and_filters_select(http):
    docs = [{"id": f"bw-{RUN}-lamp", "text": "The lighthouse keeper trimmed the lamp wick every evening.",
             "metadata": {"bw_run": RUN, "kind": "lamp", "year": 1890}},
            {"id": f"bw-{RUN}-fog", "text": "The lighthouse fog horn sounded through the night.",
             "metadata": {"bw_run": RUN, "kind": "fog", "year": 1901}}]
    r = http.post("/v1/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    try:
        for d in docs:
            assert http.get(f"/v1/documents/{d['id']}").json()["metadata"] == d["metadata"]
        hits = http.post("/v1/search", json={"query": "lighthouse keeper", "top_k": 10,
                                             "filter": {"bw_run": RUN}}).json()["results"]
        assert {h["document_id"] for h in hits} == {d["id"] for d in docs}
        by_id = {d["id"]: d["metadata"] for d in docs}
        assert all(h["metadata"] == by_id[h["document_id"]] for h in hits)
        hits = http.post("/v1/search", json={"query": "lighthouse", "top_k": 10,
                                             "filter": {"bw_run": RUN, "kind": "fog"}}).json()["results"]
        assert [h["document_id"] for h in hits] == [f"bw-{RUN}-fog"]
        err = _error(http.post("/v1/search", json={"query": "q", "filter": {"bw_run": "x" * 1025}}), 400)
        assert err["param"] == "filter.bw_run"
    finally:
        for d in docs:
            http.delete(f"/v1/documents/{d['id']}")
    hits = http.post("/v1/search", json={"query": "lighthouse", "top_k": 10, "filter": {"bw_run": RUN}}).json()
    assert hits["results"] == []
