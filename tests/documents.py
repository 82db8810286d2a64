"""Document files the tests make themselves with the real libraries: PDFs (fpdf2; encrypted with pypdf; one of
images only, as a scanner makes), Word documents with headings (python-docx), a web page with navigation,
scripts and a footer around its text, Markdown; and the bad ones: a damaged PDF and a Word document of under
100 KB that expands past 1 GB (a zip bomb: one compressed part that the archive's directory lists many times,
as overlapping-file zip bombs do)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    doc = FPDF()
    doc.set_font("helvetica", size=12)
    for text in pages:
        doc.add_page()
        doc.multi_cell(0, 8, text)
    doc.output(str(path))
    return path


def scanned_pdf(path: Path, n: int = 2) -> Path:
    """Pages with drawings only, no text layer (what a scan without OCR is to a text extractor)."""
    from fpdf import FPDF

    doc = FPDF()
    for i in range(n):
        doc.add_page()
        doc.set_fill_color((40 * i) % 256, 90, 160)
        doc.rect(20, 20, 150, 200, style="F")
    doc.output(str(path))
    return path


def encrypted_pdf(path: Path, text: str = "A secret page.") -> Path:
    from pypdf import PdfReader, PdfWriter

    plain = pdf(path.with_suffix(".plain.pdf"), [text])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password="s3cret", owner_password="owner", algorithm="RC4-128")
    writer.write(path)
    plain.unlink()
    return path


def damaged_pdf(path: Path) -> Path:
    whole = pdf(path.with_suffix(".whole.pdf"), ["Page one text. " * 40, "Page two text. " * 40]).read_bytes()
    whole_path = path.with_suffix(".whole.pdf")
    whole_path.unlink()
    # The header and the start of the body, the rest (objects, cross-reference table, trailer) gone.
    path.write_bytes(whole[: len(whole) // 3])
    return path


def docx(path: Path, blocks: list[tuple[int, str]]) -> Path:
    """``blocks``: (heading level, text); level 0 is a paragraph."""
    import docx as python_docx

    document = python_docx.Document()
    for level, text in blocks:
        if level:
            document.add_heading(text, level=level)
        else:
            document.add_paragraph(text)
    document.save(str(path))
    return path


def zip_bomb_docx(path: Path, copies: int = 18, part_mib: int = 60) -> Path:
    """A valid Word document plus one part of ``part_mib`` MiB of zeros, listed ``copies`` times in the
    archive's directory: under 100 KB on disk, ``copies * part_mib`` MiB once expanded."""
    base = docx(path, [(1, "Title"), (0, "Nothing to see.")]).read_bytes()
    eocd = base.rindex(b"PK\x05\x06")
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack("<IHHHHIIH", base[eocd:eocd + 22])
    name = b"word/media/zeros.bin"
    size = part_mib << 20
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = packer.compress(bytes(size)) + packer.flush()
    crc = zlib.crc32(bytes(size))
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0) + name
    body = base[:cd_offset] + local + data
    entry = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size, len(name),
                        0, 0, 0, 0, 0, cd_offset) + name
    directory = base[cd_offset:cd_offset + cd_size] + entry * copies
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count + copies, count + copies, len(directory), len(body), 0)
    path.write_bytes(body + directory + end)
    return path


HTML = """<!DOCTYPE html><html><head><title>Glacier notes</title><script>var tracking = "NAVSCRIPT";</script>
</head><body><nav><a href="/">Home</a> | <a href="/menu">NAVMENU products</a></nav>
<main><h1>Glaciers of the Alps</h1><p>Glaciers are large bodies of ice that move slowly over land, built from
snow that fell over many years and pressed into ice.</p>
<h2>Retreat</h2><p>The Aletsch glacier retreated forty metres this year, according to the annual survey of the
mountain institute, the largest loss since records began.</p>
<h3>Causes</h3><p>Warmer summers melt the ice faster than winter snow can replace it, so the glaciers shrink
year after year.</p></main><footer>FOOTERTEXT Copyright 2026 Example Corp. Privacy policy.</footer></body></html>
"""


def html(title: str, blocks: list[tuple[int, str]]) -> str:
    """A web page: navigation, a script and a footer around a main text of ``blocks`` ((heading level, text);
    level 0 a paragraph)."""
    body = "".join(f"<h{level}>{text}</h{level}>" if level else f"<p>{text}</p>" for level, text in blocks)
    return (f"<!DOCTYPE html><html><head><title>{title}</title><script>var t = 'NAVSCRIPT';</script></head><body>"
            f"<nav><a href='/'>Home</a> <a href='/menu'>NAVMENU</a></nav><main>{body}</main>"
            "<footer>FOOTERTEXT Copyright 2026 Example Corp.</footer></body></html>")
