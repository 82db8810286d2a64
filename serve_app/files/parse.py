"""A document file to its text in sections, each knowing where it is: a PDF's page (pypdf), the heading path of
a Word document's paragraphs (python-docx), of a web page's main text (trafilatura, which drops navigation,
scripts and footers, and writes the headings it keeps as Markdown) and of Markdown's ATX headings. Runs in the
child process of serve_app/files/worker.py, under its time and memory limits; raises UnreadableFile with the
reason a user can act on."""

from __future__ import annotations

import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serve_app.errors import UnreadableFile
from serve_app.files.kinds import Kind

_ATX = re.compile(r"^(#{1,6})[ \t]+(\S.*)$")  # the title's closing #s are stripped by hand: linear time
_FENCE = re.compile(r"^\s*(```|~~~)")
_DOCX_HEADING = re.compile(r"^Heading (\d)$")


@dataclass
class Section:
    text: str
    page: int | None = None  # PDF: 1 for the first page
    section: str | None = None  # headings from the top, joined by " > "

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _enter(headings: list[tuple[int, str]], level: int, title: str) -> None:
    """The heading path after a heading of ``level``: those of lower levels above it stay."""
    while headings and headings[-1][0] >= level:
        headings.pop()
    headings.append((level, title))


def _path(headings: list[tuple[int, str]]) -> str | None:
    return " > ".join(t for _, t in headings) or None


def parse(path: Path, name: str, kind: Kind, max_expanded_bytes: int) -> list[Section]:
    if kind == "pdf":
        sections = _pdf(path, name)
    elif kind == "docx":
        sections = _docx(path, name, max_expanded_bytes)
    else:
        text = path.read_text(encoding="utf-8", errors="replace").lstrip("\ufeff")
        if kind == "html":
            text = _html_main_text(text, name)
        sections = markdown_sections(text) if kind in ("html", "markdown") else [Section(text)]
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise UnreadableFile(f"{name}: no text in the file", "file")
    return sections


def _pdf(path: Path, name: str) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            # Many PDFs are encrypted with an empty user password (readable by anyone, printing restricted).
            try:
                opened = bool(reader.decrypt(""))
            except (DependencyError, NotImplementedError, PdfReadError):
                opened = False
            if not opened:
                raise UnreadableFile(f"{name}: the PDF is encrypted (a password is needed to read it)", "file")
        pages = [Section(page.extract_text() or "", page=n) for n, page in enumerate(reader.pages, 1)]
    except UnreadableFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise UnreadableFile(f"{name}: a damaged PDF ({type(exc).__name__}: {str(exc)[:200]})", "file") from None
    if pages and not any(p.text.strip() for p in pages):
        raise UnreadableFile(f"{name}: the PDF has no text layer ({len(pages)} pages of images, a scan?); the app "
                             "does not run OCR: send the text, or a PDF with its text", "file")
    return pages


def _docx(path: Path, name: str, max_expanded_bytes: int) -> list[Section]:
    # The archive's own directory says how large each part expands; a small file that expands past the bound
    # (a zip bomb) is refused before anything is decompressed. A directory that lies is caught by the child's
    # memory limit, and by zipfile itself, which reads no more than the size the directory states.
    try:
        with zipfile.ZipFile(path) as z:
            expanded = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnreadableFile(f"{name}: a damaged Word document ({exc})", "file") from None
    if expanded > max_expanded_bytes:
        raise UnreadableFile(f"{name}: the Word document expands to {expanded >> 20} MiB, over the "
                             f"{max_expanded_bytes >> 20} MiB allowed (files.max_expanded_bytes)", "file")
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise UnreadableFile(f"{name}: a damaged Word document ({type(exc).__name__})", "file") from None
    sections: list[Section] = []
    headings: list[tuple[int, str]] = []
    lines: list[str] = []

    def close() -> None:
        if lines:
            sections.append(Section("\n".join(lines), section=_path(headings)))
            lines.clear()

    for p in document.paragraphs:
        text = p.text.strip()
        style = p.style.name if p.style is not None else ""
        level = 1 if style == "Title" else int(m.group(1)) if (m := _DOCX_HEADING.match(style or "")) else 0
        if level and text:
            close()
            _enter(headings, level, text)
            lines.append(text)
        elif text:
            lines.append(text)
    close()
    return sections


def _html_main_text(html: str, name: str) -> str:
    import trafilatura

    text = trafilatura.extract(html, output_format="markdown", include_comments=False, include_tables=True,
                               favor_recall=True)
    if not text or not text.strip():
        raise UnreadableFile(f"{name}: no main text in the page (only navigation, scripts or markup)", "file")
    return text


def markdown_sections(text: str) -> list[Section]:
    """Markdown split at its ATX headings (``#`` to ``######``, not inside fenced code), each part with the path
    of headings above it; the heading line stays in its part's text."""
    sections: list[Section] = []
    headings: list[tuple[int, str]] = []
    lines: list[str] = []
    fenced = False

    def close() -> None:
        if "".join(lines).strip():
            sections.append(Section("\n".join(lines).strip(), section=_path(headings)))
        lines.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        m = None if fenced else _ATX.match(line)
        if m:
            close()
            _enter(headings, len(m.group(1)), m.group(2).rstrip().rstrip("#").rstrip() or m.group(2).strip())
        lines.append(line)
    close()
    return sections
