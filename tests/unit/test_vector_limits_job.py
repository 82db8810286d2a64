"""The batch-ingest job goes through the API's limits: a document over a limit (with the running app's
settings) is refused and reported by id with the same message, never sent; a repeated id is refused; a batch
the deployment refuses (its write budget) is split until the refused document stands alone, and the others
are written; a refusal is not retried, a transient failure is (after a doubling backoff, each retry said on
stderr); the summary counts what was refused."""

import pytest

from serve_app.config.settings import VectorSettings
from serve_app.errors import PayloadTooLarge, ServiceUnavailable
from serve_app.jobs.ingest import Ingest, refusal
from serve_app.protocol.retrieval import Document
from serve_app.vector.limits import check_write_budget

pytestmark = pytest.mark.unit

S = VectorSettings(max_metadata_value_chars=16, max_ingest_chunks_per_request=10)


class _Deployment:
    """VectorStore.ingest: a document is as many chunks as its text has words; the budget is checked the
    deployment's way (before writing). Records every call."""

    def __init__(self, fail_first: int = 0):
        self.calls, self.written, self.fail_first = [], {}, fail_first

    def __call__(self, payload):
        self.calls.append([d["id"] for d in payload])
        if self.fail_first:
            self.fail_first -= 1
            raise ServiceUnavailable("replica restarting")
        counts = [len(d["text"].split()) for d in payload]
        check_write_budget(counts, S)
        self.written.update({d["id"]: d for d in payload})
        return [{"id": d["id"], "chunks": n} for d, n in zip(payload, counts, strict=True)]


def _doc(i, words=1, **meta):
    return Document(id=f"d{i}", text=" ".join(["w"] * words), metadata=meta)


def _run(docs, deployment, size=4):
    lines = []
    job = Ingest(deployment, S, attempts=3, backoff_s=0, report=lines.append)
    for k in range(0, len(docs), size):
        job.batch([d for d in docs[k:k + size] if job.admit(d)])
    return job, lines


def test_a_document_over_a_limit_is_reported_and_never_sent():
    deployment = _Deployment()
    docs = [_doc(0), _doc(1, title="x" * 17), _doc(2), _doc(0)]
    job, lines = _run(docs, deployment)
    assert deployment.calls == [["d0", "d2"]]
    (first, why), (again, why_again) = job.refused
    assert (first, again) == ("d1", "d0")
    assert why == "document.metadata.title is 17 characters long; at most 16 are allowed"
    assert "appears earlier" in why_again
    assert lines == [f"refused 'd1': {why}", f"refused 'd0': {why_again}"]
    assert job.summary() == {"documents": 2, "chunks": 2, "refused": 2}


def test_refusal_is_the_apis_check():
    assert refusal(_doc(0, title="x" * 16), S) is None
    assert "document.metadata.title" in refusal(_doc(0, title="x" * 17), S)
    assert "document.text" in refusal(Document(id="t", text="x" * (S.max_document_chars + 1)), S)


def test_a_batch_over_the_budget_is_split_down_to_the_refused_document():
    deployment = _Deployment()
    docs = [_doc(0, 4), _doc(1, 4), _doc(2, 11), _doc(3, 4)]
    job, lines = _run(docs, deployment)
    assert set(deployment.written) == {"d0", "d1", "d3"}
    [(doc_id, why)] = job.refused
    assert doc_id == "d2" and "split the document" in why
    assert job.summary() == {"documents": 3, "chunks": 12, "refused": 1}
    assert len(lines) == 1


def test_refusals_are_not_retried_failures_are():
    deployment = _Deployment()
    job, _ = _run([_doc(0, 11)], deployment)
    assert deployment.calls == [["d0"]] and job.summary()["refused"] == 1  # one call: a refusal is final
    deployment = _Deployment(fail_first=2)
    job, _ = _run([_doc(0, 2)], deployment)
    assert deployment.calls == [["d0"]] * 3 and job.summary() == {"documents": 1, "chunks": 2, "refused": 0}
    with pytest.raises(ServiceUnavailable):
        _run([_doc(0, 2)], _Deployment(fail_first=3))


def test_the_deployments_refusal_arrives_wrapped():
    """Through a Serve handle the refusal arrives as Ray's task error wrapping it; the job still sees it."""
    from ray.exceptions import RayTaskError

    def send(payload):
        cause = PayloadTooLarge("documents.0 would be stored as 20 chunks", "documents.0.text")
        raise RayTaskError("ingest", "traceback", cause).as_instanceof_cause()

    job, _ = _run([_doc(0)], send)
    assert job.refused == [("d0", "documents.0 would be stored as 20 chunks")]


def test_a_failed_batch_is_retried_after_a_doubling_backoff_and_said_so(capsys):
    slept = []
    job = Ingest(_Deployment(fail_first=2), S, attempts=4, backoff_s=1.5, report=print, sleep=slept.append)
    job.batch([_doc(0, 2)])
    assert slept == [1.5, 3.0] and job.summary()["documents"] == 1
    assert capsys.readouterr().err.splitlines() == [
        "batch failed (ServiceUnavailable: replica restarting); retry 1/3 in 1.5s",
        "batch failed (ServiceUnavailable: replica restarting); retry 2/3 in 3.0s"]


def test_a_folder_of_files_is_read_by_kind_and_unreadable_files_are_reported(tmp_path):
    from serve_app.jobs.ingest import iter_documents
    from tests import documents

    documents.pdf(tmp_path / "report.pdf", ["First page.", "Second page about ice."])
    documents.docx(tmp_path / "memo.docx", [(1, "Memo"), (0, "Body.")])
    (tmp_path / "page.html").write_text(documents.HTML)
    (tmp_path / "notes.md").write_text("# Notes\n\nSome notes.\n")
    (tmp_path / "empty.txt").write_text("  \n")
    documents.encrypted_pdf(tmp_path / "locked.pdf")
    documents.zip_bomb_docx(tmp_path / "bomb.docx")
    (tmp_path / "fake.pdf").write_text("# Not a PDF\n")
    refused = []
    docs = {d.id: d for d in iter_documents(tmp_path, lambda name, why: refused.append((name, why)))}
    assert set(docs) == {"report.pdf", "memo.docx", "page.html", "notes.md"}
    assert [s.page for s in docs["report.pdf"].sections] == [1, 2]
    assert docs["memo.docx"].metadata == {"source": "memo.docx", "suffix": "docx", "kind": "docx"}
    assert docs["notes.md"].sections[0].section == "Notes" and "NAVMENU" not in docs["page.html"].text
    assert sorted(name for name, _ in refused) == ["bomb.docx", "fake.pdf", "locked.pdf"]
    assert all(why.startswith(f"{name}: ") for name, why in refused)
