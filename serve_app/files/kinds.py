"""What kind of document a file is, told by its content: PDF by its header, a Word document by the ZIP
archive's own parts, HTML by its markup, Markdown and plain text by decoding as UTF-8. The name's extension
only has to agree: a file whose extension names another supported kind than its content is refused, since
either the name or the content is not what its sender thinks (a renamed file, or one made to look like
something else). Runs in the caller's process on the first bytes and the ZIP directory only: nothing here
decompresses or parses the document (serve_app/files/parse.py does, in a child process)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Literal

from serve_app.errors import UnsupportedFile

Kind = Literal["pdf", "docx", "html", "markdown", "text"]
KINDS: tuple[Kind, ...] = ("pdf", "docx", "html", "markdown", "text")
# Extensions that name a kind; the text family (text, Markdown) may hold either.
EXTENSIONS: dict[str, Kind] = {".pdf": "pdf", ".docx": "docx", ".html": "html", ".htm": "html", ".xhtml": "html",
                               ".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text"}
_TEXT_FAMILY = {"markdown", "text"}
_HEAD = 4096  # bytes read to tell the kind
_HTML_OPENINGS = (b"<!doctype html", b"<html", b"<head", b"<body")
_MD_HEADING = re.compile(r"^#{1,6}\s+\S", re.M)
NAMES = {"pdf": "PDF", "docx": "Word document", "html": "HTML page", "markdown": "Markdown", "text": "text"}


def detect(path: Path, name: str) -> Kind:
    """The kind of the file at ``path`` (sent as ``name``), from its content; UnsupportedFile (415) naming the
    file when it is no kind the app reads or its extension names another kind."""
    with path.open("rb") as f:
        head = f.read(_HEAD)
    kind = _sniff(path, head, name)
    said = EXTENSIONS.get(Path(name).suffix.lower())
    if said is not None and said != kind and not (said in _TEXT_FAMILY and kind in _TEXT_FAMILY):
        raise UnsupportedFile(f"{name}: the name says {NAMES[said]} but the content is {NAMES[kind]}; send it "
                              f"with a name that matches its content", "file")
    return kind


def _sniff(path: Path, head: bytes, name: str) -> Kind:
    if not head.strip():
        raise UnsupportedFile(f"{name}: the file is empty", "file")
    if head.lstrip().startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise UnsupportedFile(f"{name}: a damaged ZIP archive ({exc})", "file") from None
        if "word/document.xml" in names:
            return "docx"
        raise UnsupportedFile(f"{name}: a ZIP archive that is not a Word document (.docx)", "file")
    if b"\x00" in head:
        raise UnsupportedFile(f"{name}: a binary file of a kind the app does not read (it reads PDF, Word "
                              "documents, HTML, Markdown and text)", "file")
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff")
    # The head may end inside a multibyte character; anything else that is not UTF-8 is not text.
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            raise UnsupportedFile(f"{name}: not UTF-8 text, and no kind the app reads", "file") from None
    if _is_html(head):
        return "html"
    if Path(name).suffix.lower() in (".md", ".markdown") or _MD_HEADING.search(text):
        return "markdown"
    return "text"


def _is_html(head: bytes) -> bool:
    """Markup that opens as an HTML page: an XML declaration and comments may come first. A loop over the
    comments, not a pattern, so a head of many comments costs one pass."""
    rest = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if rest.startswith(b"<?xml"):
        end = rest.find(b"?>")
        rest = rest[end + 2:].lstrip() if end >= 0 else b""
    while rest.startswith(b"<!--"):
        end = rest.find(b"-->", 4)
        rest = rest[end + 3:].lstrip() if end >= 0 else b""
    opening = rest[:16].lower()
    return any(opening.startswith(o) and opening[len(o):len(o) + 1] in (b" ", b">", b"\t", b"\n", b"\r")
               for o in _HTML_OPENINGS)
