"""Batch ingest as a Ray job: on the cluster tier's real Ray cluster (tests/cluster/conftest.py), `ray job
submit ... python -m serve_app.jobs.ingest FOLDER` ingests every file into the running app, prints the final
count, the documents are searchable, and a second run changes nothing (idempotent). (That a retrieval-only
application answers the LLM's routes with 404 is tests/unit/test_ingress_routes.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests import documents

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _corpus(folder: Path) -> int:
    (folder / "guides").mkdir(parents=True)
    topics = ["volcanoes", "honeybees", "glaciers", "lighthouses", "tidepools", "comets"]
    for i, t in enumerate(topics):
        body = " ".join(f"Fact {j} about {t}: {t} are fascinating subject number {j}." for j in range(30 + 10 * i))
        (folder / ("guides" if i % 2 else ".") / f"{t}.md").write_text(f"# {t.title()}\n\n{body}\n")
    (folder / "empty.txt").write_text("   \n")
    (folder / "ignored.csv").write_text("a,b\n")
    # A PDF: read in the job's child process, each chunk with its page.
    (folder / "reports").mkdir()
    documents.pdf(folder / "reports" / "ice.pdf", ["Annual report of the observatory, first page: staff and budget.",
                                                   "Second page: the Aletsch glacier retreated forty metres."])
    return len(topics) + 1


def _submit(cluster, folder):
    r = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], "--",
         sys.executable, "-m", "serve_app.jobs.ingest", str(folder), "--batch-size", "2"],
        capture_output=True, text=True, timeout=600, env=cluster["env"],
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in r.stdout, r.stdout[-3000:]
    counts = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"documents"')]
    assert counts, r.stdout[-3000:]
    return counts[-1]


def test_ray_job_ingest_is_searchable_and_idempotent(cluster):
    folder = cluster["tmp"] / "corpus"
    n_docs = _corpus(folder)
    first = _submit(cluster, folder)
    assert first["documents"] == n_docs and first["chunks"] > n_docs

    with httpx.Client(base_url=cluster["url"], timeout=60) as http:
        chunks_after_first = http.get("/healthz").json()["components"]["vector"]["chunks"]
        assert chunks_after_first == first["chunks"]
        hits = http.post("/v1/search", json={"query": "facts about glaciers", "top_k": 3}).json()["results"]
        assert hits[0]["document_id"] == "glaciers.md"
        assert http.get("/v1/documents/guides/honeybees.md").json()["metadata"] == {
            "source": "guides/honeybees.md", "suffix": "md", "kind": "markdown"}
        hits = http.post("/v1/search", json={"query": "Aletsch retreated forty metres", "top_k": 1}).json()["results"]
        assert (hits[0]["document_id"], hits[0]["page"]) == ("reports/ice.pdf", 2)

        second = _submit(cluster, folder)
        assert second == first
        assert http.get("/healthz").json()["components"]["vector"]["chunks"] == chunks_after_first
