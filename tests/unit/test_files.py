"""Document files: kinds told by content, parsed into located sections in a child process (real pypdf,
python-docx, trafilatura on files the tests make: tests/documents.py), and /v1/files on an ingress without Ray
(a state store of each engine; the vector tier's handle records what it is asked to write). Bad files — an
encrypted or damaged PDF, a scanned one without text, a Word document of under 100 KB that expands past 1 GB, a
file whose name lies about its kind, one over the size limit — are each a 4xx naming the file and the reason,
and nothing is written."""

import asyncio
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve_app.config.settings import AppSettings
from serve_app.errors import UnreadableFile, UnsupportedFile
from serve_app.files.kinds import detect
from serve_app.files.parse import markdown_sections
from serve_app.files.sandbox import ParseLimits, parse_in_child, parse_in_child_blocking
from serve_app.ingress.context import IngressContext
from serve_app.ingress.fastapi_app import create_app
from serve_app.state import store
from tests import documents
from tests.fakes.handles import Method

pytestmark = pytest.mark.unit

MARKDOWN = "# Guide\n\nIntro.\n\n## Install\n\nRun it.\n\n```\n# a comment, not a heading\n```\n\n### Linux\n\napt.\n\n## Use\n\nGo.\n"


def _parse(path, name=None):
    name = name or path.name
    return parse_in_child_blocking(path, name, detect(path, name), ParseLimits(timeout_s=20))


def test_each_kind_is_read_with_its_places(tmp_path):
    pdf = _parse(documents.pdf(tmp_path / "a.pdf", ["First page about ice.", "Second page: forty metres."]))
    assert [(s["page"], s["text"]) for s in pdf] == [(1, "First page about ice."), (2, "Second page: forty metres.")]
    word = _parse(documents.docx(tmp_path / "b.docx", [(1, "Glaciers"), (0, "Intro."), (2, "Retreat"), (0, "Lost."),
                                                        (3, "Causes"), (0, "Heat."), (2, "Outlook"), (0, "Less.")]))
    assert [s["section"] for s in word] == ["Glaciers", "Glaciers > Retreat", "Glaciers > Retreat > Causes",
                                            "Glaciers > Outlook"]
    (tmp_path / "c.html").write_text(documents.HTML)
    page = _parse(tmp_path / "c.html")
    text = " ".join(s["text"] for s in page)
    # The main text and its headings; navigation, scripts and the footer dropped.
    assert "forty metres" in text and not any(w in text for w in ("NAVMENU", "NAVSCRIPT", "FOOTERTEXT"))
    assert [s["section"] for s in page] == ["Glaciers of the Alps", "Glaciers of the Alps > Retreat",
                                            "Glaciers of the Alps > Retreat > Causes"]
    assert [s.section for s in markdown_sections(MARKDOWN)] == ["Guide", "Guide > Install", "Guide > Install > Linux",
                                                                "Guide > Use"]
    (tmp_path / "notes").write_text(MARKDOWN)  # no extension: told by its headings
    assert detect(tmp_path / "notes", "notes") == "markdown"
    (tmp_path / "plain.txt").write_text("Just words.\n")
    assert _parse(tmp_path / "plain.txt") == [{"text": "Just words.\n", "page": None, "section": None}]


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, type, str]]:
    (tmp_path / "page.pdf").write_text(documents.HTML)
    (tmp_path / "tool.docx").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(200))
    return {
        "secret.pdf": (documents.encrypted_pdf(tmp_path / "secret.pdf"), UnreadableFile, "encrypted"),
        "broken.pdf": (documents.damaged_pdf(tmp_path / "broken.pdf"), UnreadableFile, "damaged"),
        "scan.pdf": (documents.scanned_pdf(tmp_path / "scan.pdf"), UnreadableFile, "no text layer"),
        "bomb.docx": (documents.zip_bomb_docx(tmp_path / "bomb.docx"), UnreadableFile, "expands to 1080 MiB"),
        "page.pdf": (tmp_path / "page.pdf", UnsupportedFile, "the name says PDF but the content is HTML page"),
        "tool.docx": (tmp_path / "tool.docx", UnsupportedFile, "binary file"),
    }


def test_bad_files_are_refused_naming_the_file_and_the_reason(tmp_path):
    bomb = documents.zip_bomb_docx(tmp_path / "size.docx")
    assert bomb.stat().st_size < 100_000  # 1080 MiB once expanded
    for name, (path, error, reason) in _bad_files(tmp_path).items():
        started = time.monotonic()
        with pytest.raises(error) as err:
            _parse(path, name)
        print(f"{name}: {type(err.value).__name__} in {time.monotonic() - started:.2f}s: {err.value.message}")
        assert err.value.message.startswith(f"{name}: ") and reason in err.value.message
        assert err.value.param == "file"


def test_a_parser_past_its_limits_is_stopped(tmp_path, monkeypatch):
    import serve_app.files.sandbox as sandbox

    path = documents.pdf(tmp_path / "ok.pdf", ["fine"])
    # A child that never answers: killed at the time limit, the caller told so.
    monkeypatch.setattr(sandbox, "_CMD", ["sleep", "30"])
    started = time.monotonic()
    with pytest.raises(UnreadableFile, match="longer than 0.5s"):
        asyncio.run(parse_in_child(path, "ok.pdf", "pdf", ParseLimits(timeout_s=0.5)))
    assert time.monotonic() - started < 10
    # A child that dies (the kernel's kill past the memory limit looks the same): refused, not crashed.
    monkeypatch.setattr(sandbox, "_CMD", ["sh", "-c", "kill -9 $$"])
    with pytest.raises(UnreadableFile, match="stopped without an answer"):
        parse_in_child_blocking(path, "ok.pdf", "pdf", ParseLimits())


# -- /v1/files ----------------------------------------------------------------------------------------------


class _Vector:
    """The VectorStore deployment's handle: what it was asked to write, per tenant."""

    def __init__(self):
        self.written = []
        self.ingest = Method(self._ingest)
        self.delete_document = Method(lambda document_id, tenant, version: self.written.append(
            ("delete", document_id, version)) or {"id": document_id, "deleted": True, "chunks": 1})

    def _ingest(self, docs, tenant):
        self.written.append((tenant, docs))
        return [{"id": d["id"], "chunks": len(d["sections"]), "unchanged": False, "version": f"v-{d['id']}"}
                for d in docs]


@pytest.fixture
def uploads(engine):
    store.migrate(engine)
    settings = AppSettings.model_validate({"model": {"enabled": False}, "files": {"max_bytes": 200_000}})
    vector = _Vector()
    ctx = IngressContext.build(settings, None, vector, state=engine)
    with TestClient(create_app(ctx)) as http:
        yield http, vector


def test_an_upload_becomes_one_located_document(uploads, tmp_path):
    http, vector = uploads
    path = documents.docx(tmp_path / "guide.docx", [(1, "Guide"), (0, "Intro."), (2, "Install"), (0, "Run it.")])
    r = http.post("/v1/files", files={"file": ("guide.docx", path.read_bytes())}, data={"purpose": "assistants"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "file" and body["status"] == "processed" and body["kind"] == "docx"
    assert body["filename"] == "guide.docx" and body["document_id"] == "guide.docx" and body["chunks"] == 2
    assert http.get(body["status_url"]).json()["status"] == "processed"
    [(tenant, [doc])] = vector.written
    assert tenant == "" and doc["metadata"] == {"source": "guide.docx", "kind": "docx"}
    assert [s["section"] for s in doc["sections"]] == ["Guide", "Guide > Install"]
    assert [f["id"] for f in http.get("/v1/files").json()["data"]] == [body["id"]]
    # Named by the upload: another document id.
    r = http.post("/v1/files", files={"file": ("notes.md", MARKDOWN.encode())}, data={"document_id": "kb/notes"})
    assert r.json()["document_id"] == "kb/notes" and r.json()["kind"] == "markdown"
    assert http.delete(f"/v1/files/{body['id']}").json()["deleted"] is True
    # The document goes only while it holds this file's version.
    assert vector.written[-1] == ("delete", "guide.docx", "v-guide.docx")
    assert http.get(body["status_url"]).status_code == 404


def test_bad_uploads_are_4xx_and_write_nothing(uploads, tmp_path):
    http, vector = uploads
    cases = {name: (path.read_bytes(), 415 if error is UnsupportedFile else 422, reason)
             for name, (path, error, reason) in _bad_files(tmp_path).items()}
    cases["big.html"] = (b"<html><body>" + b"x" * 300_000 + b"</body></html>", 413, "larger than")
    cases["empty.txt"] = (b"", 415, "empty")
    for name, (content, status, reason) in cases.items():
        r = http.post("/v1/files", files={"file": (name, content)})
        assert r.status_code == status, (name, r.text)
        error = r.json()["error"]
        assert reason in error["message"] and error["type"] == "invalid_request_error", name
    assert vector.written == []
    # Refused by the parser, the file's entry says why; refused before (kind, size), there is none.
    listed = http.get("/v1/files").json()["data"]
    assert {f["filename"] for f in listed} == {"secret.pdf", "broken.pdf", "scan.pdf", "bomb.docx"}
    assert all(f["status"] == "error" and f["status_details"] for f in listed)
