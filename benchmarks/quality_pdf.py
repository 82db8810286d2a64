"""Retrieval quality on PDFs, page-level: recall@1, recall@10 and MRR@10 of dense, keyword and hybrid search,
where a hit is right only on the right page of the right PDF.

Source: the Debian manuals of benchmarks/quality.py (python3.11-doc and postgresql-doc-15 by default), the same
seeded sample of sections. Made here: each manual page (one HTML file) becomes one PDF, typeset with fpdf2, one
new PDF page per section holding the section's body (what quality.py indexes: no heading, no first sentence),
its text transliterated to Latin-1 (fpdf2's core fonts); a long section runs on over several pages, each of
which counts as right. The PDFs are then read back the app's way — pypdf, one section per page
(serve_app/files/parse.py) — chunked per page, embedded and stored as the app stores a file's chunks, each with
its page. A hit list is ranked by distinct (PDF, page), 10 deep. Query kinds as quality.py's.

    python -m benchmarks.quality_pdf [--sections 1500] [--cache DIR]

Writes benchmarks/results/quality-pdf.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import unicodedata
from collections import defaultdict
from pathlib import Path

from benchmarks.quality import HITS, MODES, PACKAGES, REPHRASED, RESULTS, SEED, K, Section, corpus, evaluate, table


def latin1(text: str) -> str:
    """What fpdf2's core fonts can set: accents kept where Latin-1 has them, other marks decomposed or dropped."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2013", "-").replace("\u2014", "-").replace("\u2026", "...")
    out = []
    for ch in text:
        if ord(ch) < 256:
            out.append(ch)
        else:
            out.append(unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1") or " ")
    return "".join(out)


def typeset(sections: list[Section], folder: Path) -> dict[str, set[tuple[str, int]]]:
    """One PDF per manual page, one PDF page (or more) per section; each section's key -> its (PDF, page)s."""
    from fpdf import FPDF

    by_page: dict[str, list[Section]] = defaultdict(list)
    for s in sections:
        by_page[s.key.split("#", 1)[0]].append(s)
    where: dict[str, set[tuple[str, int]]] = {}
    for page, group in sorted(by_page.items()):
        name = page.replace("/", "_").removesuffix(".html") + ".pdf"
        doc = FPDF()
        doc.set_font("helvetica", size=10)
        for s in group:
            doc.add_page()
            first = doc.page_no()
            doc.multi_cell(0, 5, latin1(s.body))
            where[s.key] = {(name, p) for p in range(first, doc.page_no() + 1)}
        doc.output(str(folder / name))
    return where


def build(folder: Path, embedder, encoder, store, chunk_tokens: int, overlap: int) -> dict:
    """Each PDF read back (pypdf, page by page), chunked per page, embedded and written with its pages."""
    from transformers.utils import logging as hf_logging

    from serve_app.files.parse import parse
    from serve_app.vector.chunker import chunk_sections
    from serve_app.vector.store import StoredChunk

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    docs = []
    for pdf in sorted(folder.glob("*.pdf")):
        pages = [s.to_dict() for s in parse(pdf, pdf.name, "pdf", 1 << 30)]
        docs.append((pdf.name, chunk_sections(pdf.name, pages, embedder.tokenizer, chunk_tokens, overlap)))
    t_parse = time.perf_counter()
    flat = [c for _, cs in docs for c in cs]
    vectors = embedder.encode([c.text for c in flat], 32)
    sparse = encoder.documents([c.text for c in flat])
    t_embed = time.perf_counter()
    i = 0
    for name, cs in docs:
        stored = [StoredChunk("", name, c.position, c.text, page=c.page) for c in cs]
        store.replace_document(name, stored, vectors[i:i + len(cs)], {}, sparse[i:i + len(cs)])
        i += len(cs)
    return {"pdfs": len(docs), "chunks": len(flat), "parse_s": t_parse - started, "embed_s": t_embed - t_parse,
            "write_s": time.perf_counter() - t_embed}


def main() -> None:
    from serve_app.config.paths import cache_dir
    from serve_app.config.settings import VectorSettings
    from serve_app.vector.edge_store import QdrantEdgeStore
    from serve_app.vector.embedder import Embedder
    from serve_app.vector.keywords import KeywordEncoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", type=int, default=1500, help="sections in the corpus (a seeded sample)")
    ap.add_argument("--cache", type=Path, default=None, help="where packages are downloaded (quality.py's)")
    ap.add_argument("--packages", nargs="+", default=list(PACKAGES))
    ap.add_argument("--out", type=Path, default=RESULTS / "quality-pdf.json")
    args = ap.parse_args()

    started = time.perf_counter()
    settings = VectorSettings()
    rephrased = {k: v["query"] for k, v in json.loads(REPHRASED.read_text())["queries"].items()}
    c = corpus(args.packages, args.cache or cache_dir() / "corpus", args.sections, rephrased)
    sections: list[Section] = c["sections"]
    embedder, encoder = Embedder(settings.embedder), KeywordEncoder()
    with tempfile.TemporaryDirectory(prefix="quality-pdf-") as tmp:
        folder = Path(tmp) / "pdf"
        folder.mkdir()
        where = typeset(sections, folder)
        t_typeset = time.perf_counter() - started
        store = QdrantEdgeStore(Path(tmp) / "documents", embedder.dim, hnsw_ef=settings.hnsw_ef, keywords=encoder)
        try:
            built = build(folder, embedder, encoder, store, settings.chunk_tokens, settings.chunk_overlap)
            print(f"{built['pdfs']} PDFs, {sum(len(w) for w in where.values())} section pages, {built['chunks']} "
                  "chunks", flush=True)
            query_sets = {
                "heading": [(s.heading, where[s.key]) for s in sections if s.key in c["unique_heading"]],
                "first_sentence": [(s.first, where[s.key]) for s in sections if s.key in c["unique_first"]],
                "rephrased": [(q, where[k]) for k, q in sorted(rephrased.items()) if k in where],
            }
            candidates = max(HITS, settings.hybrid_candidates)
            results = {kind: evaluate(qs, embedder, encoder, store, candidates, unit=lambda h: (h.document_id, h.page))
                       for kind, qs in query_sets.items()}
        finally:
            store.close()
    for r in results.values():
        for mode in MODES:
            r[mode].pop("reciprocal_ranks")
    report = {
        "source": "Debian manuals (" + ", ".join(f"{p} {v}" for p, v in c["versions"].items()) + "), one PDF per "
                  "manual page made with fpdf2, one PDF page per section, read back with pypdf",
        "unit": "(PDF, page)", "sections": len(sections), "pdfs": built["pdfs"], "chunks": built["chunks"],
        "chunk_tokens": settings.chunk_tokens, "chunk_overlap": settings.chunk_overlap, "hits_per_query": HITS,
        "k": K, "seed": SEED, "results": results,
        "timings_s": {"corpus_and_typeset": t_typeset, **{k: v for k, v in built.items() if k.endswith("_s")},
                      "total": time.perf_counter() - started},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(f"total {report['timings_s']['total']:.0f} s; written {args.out}")


if __name__ == "__main__":
    main()
