"""Retrieval quality: recall@1, recall@10 and MRR@10 of dense, keyword (BM25) and hybrid search, on a real
documentation corpus taken from Debian's packages (the Python and PostgreSQL manuals by default).

Known-item task: every section of the manuals (the text under a heading, up to the next heading) is one
document; a query names one section and the right answer is that section. Queries of three kinds, each
reported on its own:

- ``heading``: the section's heading (only sections whose heading is unique in the corpus: "Examples" has
  many right answers);
- ``first_sentence``: the section's first sentence (unique ones likewise);
- ``rephrased``: questions written by hand in other words (benchmarks/data/rephrased.json), so that a task
  made of the corpus' own words cannot flatter BM25. Their sections are always part of the sample.

What is indexed is the section without its heading and without its first sentence, so neither query kind
finds its own text. Documents are chunked, embedded and stored the way the app does it (the app's chunker on
the embedder's tokenizer, all-MiniLM-L6-v2, BM25 from serve_app.vector.keywords, Qdrant Edge); a hit list
is ranked by document (the first chunk of each document counts), 10 documents deep.

    python -m benchmarks.quality [--sections 3000] [--cache DIR] [--packages python3.11-doc ...]

Writes benchmarks/results/quality.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REPHRASED = ROOT / "benchmarks" / "data" / "rephrased.json"
PACKAGES = ("python3.11-doc", "postgresql-doc-15")
MODES = ("dense", "keyword", "hybrid")
K = 10
# Chunk hits asked per query: a document often has several chunks among the hits, and 10 distinct
# documents must come out of them.
HITS = 50
MIN_WORDS = 30
SEED = 20261201

# Navigation, tables of contents, permalinks: the same on every page, not a section's content.
_SKIP_CLASSES = {"navheader", "navfooter", "toc", "sphinxsidebar", "related", "footer", "headerlink",
                 "toctree-wrapper", "mobile-nav", "list-of-tables", "list-of-examples", "list-of-figures"}
# DocBook titles its notes with <h3>: that is part of the section around it, not a new section.
_ADMONITIONS = {"note", "tip", "warning", "caution", "important"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BLOCKS = {"p", "div", "pre", "li", "dt", "dd", "tr", "td", "th", "table", "ul", "ol", "dl", "section",
           "blockquote", "caption", "figcaption"} | _HEADINGS
# Indexes and search pages are lists of every heading: they would answer every heading query.
_SKIP_PAGES = re.compile(r"^(genindex.*|py-modindex|search|bookindex|contents)\.html$")
# "5.4.1. Check Constraints", "F.32. pg_stat_statements", "Chapter 8. Data Types": the number is layout.
_NUMBER = re.compile(r"^(?:(?:Chapter|Appendix|Part)\s+)?(?:[A-Z]|[IVXL]+|\d+)(?:\.\d+)*\.\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+(?=[A-Z(\"'`])")


@dataclass
class Section:
    key: str  # page (under usr/share/doc) + "#" + heading: stable across runs and package versions
    heading: str
    first: str  # first sentence: a query, never indexed
    body: str  # what is indexed


class _Splitter(HTMLParser):
    """A page's (heading, text) pairs: the text under each heading up to the next one, subsections apart."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, str]] = []
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, skipped, admonition)
        self._skip = self._admonition = 0
        self._heading: list[str] | None = None
        self._in_heading = False
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            if tag == "br" and not self._skip:
                self._text.append("\n")
            return
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in ("head", "script", "style") or bool(classes & _SKIP_CLASSES)
        admonition = bool(classes & _ADMONITIONS)
        self._stack.append((tag, skip, admonition))
        self._skip += skip
        self._admonition += admonition
        if self._skip:
            return
        if tag in _HEADINGS and not self._admonition:
            self._flush()
            self._heading, self._in_heading = [], True
        elif tag in _BLOCKS:
            self._text.append("\n")

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        # Unwind to the matching tag: tolerates the odd unclosed element.
        while self._stack:
            t, skip, admonition = self._stack.pop()
            self._skip -= skip
            self._admonition -= admonition
            if t == tag:
                break
        if tag in _HEADINGS:
            self._in_heading = False
        elif tag in _BLOCKS:
            self._text.append("\n")

    def handle_data(self, data):
        if not self._skip:
            (self._heading if self._in_heading else self._text).append(data)

    def _flush(self):
        if self._heading is not None:
            self.sections.append(("".join(self._heading), "".join(self._text)))
        self._heading, self._text = None, []

    def close(self):
        super().close()
        self._flush()


def fetch(package: str, cache: Path) -> tuple[Path, str]:
    """The package's files (extracted once per version into ``cache``) and its version."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        # apt-get download writes to the working directory; it warns when the _apt user cannot write there.
        done = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"apt-get download {package} failed (is `apt-get update` done?): {done.stderr.strip()}")
        debs = sorted(cache.glob(f"{package}_*.deb"))
    deb = debs[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    root = cache / deb.stem
    if not (root / "usr").is_dir():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root / "usr" / "share" / "doc", version


def parse(doc_root: Path) -> list[Section]:
    out = []
    for page in sorted(doc_root.rglob("*.html")):
        if _SKIP_PAGES.match(page.name):
            continue
        splitter = _Splitter()
        splitter.feed(page.read_text(encoding="utf-8", errors="replace"))
        splitter.close()
        name = page.relative_to(doc_root).as_posix()
        for heading, text in splitter.sections:
            heading = _NUMBER.sub("", " ".join(heading.replace("¶", " ").split()))
            parts = _SENTENCE_END.split(" ".join(text.split()), maxsplit=1)
            if not heading or len(parts) < 2:
                continue
            first, body = parts
            # A first sentence of two words ("For example:") names nothing; one of a hundred is a paragraph.
            if 4 <= len(first.split()) <= 60 and len(body.split()) >= MIN_WORDS:
                out.append(Section(f"{name}#{heading}", heading, first, body))
    return out


def corpus(packages: list[str], cache: Path, n: int, rephrased: dict[str, str]) -> dict:
    """Every package's sections; the rephrased ones always, the rest a seeded sample up to ``n`` in all."""
    sections, versions = [], {}
    for package in packages:
        doc_root, versions[package] = fetch(package, cache)
        sections += parse(doc_root)
    # The same key twice (one heading twice on a page) is ambiguous: such sections are left out.
    counts = Counter(s.key for s in sections)
    sections = sorted((s for s in sections if counts[s.key] == 1), key=lambda s: s.key)
    by_key = {s.key: s for s in sections}
    chosen = [by_key[k] for k in rephrased if k in by_key]
    rest = [s for s in sections if s.key not in rephrased]
    chosen += random.Random(SEED).sample(rest, max(0, min(len(rest), n - len(chosen))))
    chosen.sort(key=lambda s: s.key)
    # A query with several right answers ("Examples", "New in version 3.4.") is not a known-item query.
    headings = Counter(s.heading.casefold() for s in sections)
    firsts = Counter(s.first.casefold() for s in sections)
    return {"sections": chosen, "versions": versions, "parsed": len(sections),
            "unique_heading": {s.key for s in chosen if headings[s.heading.casefold()] == 1},
            "unique_first": {s.key for s in chosen if firsts[s.first.casefold()] == 1},
            "missing_rephrased": sorted(k for k in rephrased if k not in by_key)}


def build(sections: list[Section], embedder, encoder, store, chunk_tokens: int, overlap: int) -> dict:
    """Chunk, embed and write every section as the app's ingest does; returns counts and timings."""
    from serve_app.vector.chunker import chunk_text
    from serve_app.vector.store import StoredChunk

    started = time.perf_counter()
    # The chunker tokenizes whole sections, past the model's length on purpose: silence that warning.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    chunks = [chunk_text(s.key, s.body, embedder.tokenizer, chunk_tokens, overlap) for s in sections]
    flat = [c for cs in chunks for c in cs]
    t_chunk = time.perf_counter()
    # Passes of 32 rather than the app's 128: the same vectors up to rounding, ~15 % faster here on
    # 200-token chunks.
    vectors = embedder.encode([c.text for c in flat], 32)
    t_embed = time.perf_counter()
    sparse = encoder.documents([c.text for c in flat])
    t_sparse = time.perf_counter()
    i = 0
    for s, cs in zip(sections, chunks, strict=True):
        stored = [StoredChunk(c.id, c.document_id, c.position, c.text) for c in cs]
        store.replace_document(s.key, stored, vectors[i:i + len(cs)], {}, sparse[i:i + len(cs)])
        i += len(cs)
    t_write = time.perf_counter()
    return {"chunks": len(flat), "chunk_s": t_chunk - started, "embed_s": t_embed - t_chunk,
            "embed_chunks_per_s": len(flat) / (t_embed - t_chunk), "keyword_encode_s": t_sparse - t_embed,
            "write_s": t_write - t_sparse}


def rank(hits, relevant, unit=lambda h: h.document_id) -> int | None:
    """1-based rank of the first relevant unit among the hits' distinct units (documents by default: the first
    chunk counts), top K only. ``relevant``: one unit, or a set of units that are each right (the pages a
    section spans in benchmarks/quality_pdf.py)."""
    right = relevant if isinstance(relevant, (set, frozenset)) else {relevant}
    seen: list = []
    for h in hits:
        u = unit(h)
        if u not in seen:
            seen.append(u)
            if u in right:
                return len(seen) if len(seen) <= K else None
    return None


def evaluate(queries: list[tuple[str, object]], embedder, encoder, store, candidates: int,
             unit=lambda h: h.document_id) -> dict:
    """Per mode: recall@1, recall@10, MRR@10 of (query text, relevant unit) pairs; units are documents unless
    ``unit`` says otherwise."""
    from serve_app.errors import InvalidRequest

    vectors = embedder.encode([q for q, _ in queries], 128)
    keywords = [encoder.query(q) for q, _ in queries]
    out = {}
    for mode in MODES:
        ranks, refused, started = [], 0, time.perf_counter()
        for (_, relevant), vector, sparse in zip(queries, vectors, keywords, strict=True):
            try:
                # exact: below the app's index threshold (vector.index_after_points) Edge searches exactly.
                hits = store.search(vector if mode != "keyword" else None, HITS, exact=True, mode=mode,
                                    sparse=sparse if mode != "dense" else None, candidates=candidates)
            except InvalidRequest:  # a keyword query of stop words only: the app refuses it, a miss here
                hits, refused = [], refused + 1
            ranks.append(rank(hits, relevant, unit))
        n = max(1, len(ranks))
        rr = [1 / r if r else 0.0 for r in ranks]
        mrr, se = _mean_se(rr)
        out[mode] = {"recall@1": sum(r == 1 for r in ranks) / n,
                     f"recall@{K}": sum(r is not None for r in ranks) / n,
                     f"mrr@{K}": mrr, f"mrr@{K}_se": se,
                     "refused": refused, "search_ms_mean": 1000 * (time.perf_counter() - started) / n,
                     "reciprocal_ranks": rr}  # for suggest(); not written out
    return {"queries": len(queries), **out}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and its standard error: how far apart two figures must be to be told apart."""
    n = max(1, len(xs))
    mean = sum(xs) / n
    return mean, (sum((x - mean) ** 2 for x in xs) / max(1, n - 1) / n) ** 0.5


def suggest(results: dict[str, dict]) -> dict:
    """The mode that loses least MRR@10 to the best mode on any query kind. The worst case, not the mean:
    two of the three kinds reuse the corpus' words, and a mean would let them outvote the rephrased one."""
    kinds = [k for k, r in results.items() if r["queries"]]
    regret = {m: max(max(results[k][x][f"mrr@{K}"] for x in MODES) - results[k][m][f"mrr@{K}"] for k in kinds)
              for m in MODES}
    best = min(regret, key=regret.get)
    # Paired per query (the same queries under both modes): much tighter than the modes' own standard errors.
    paired = {}
    for k in kinds:
        for m in MODES:
            if m != best:
                d = [a - b for a, b in zip(results[k][best]["reciprocal_ranks"], results[k][m]["reciprocal_ranks"],
                                           strict=True)]
                mean, se = _mean_se(d)
                paired.setdefault(k, {})[f"{best}-{m}"] = {"mrr_diff": mean, "se": se}
    return {"mode": best, "max_mrr_loss": regret, "paired_mrr_difference": paired}


def table(results: dict[str, dict]) -> str:
    lines = [f"{'queries':<16}{'n':>6}  {'mode':<8}{'R@1':>7}{'R@10':>7}{'MRR@10':>8}{'±se':>7}"]
    for kind, r in results.items():
        for mode in MODES:
            m = r[mode]
            lines.append(f"{kind:<16}{r['queries']:>6}  {mode:<8}{m['recall@1']:>7.3f}{m[f'recall@{K}']:>7.3f}"
                         f"{m[f'mrr@{K}']:>8.3f}{m[f'mrr@{K}_se']:>7.3f}")
    return "\n".join(lines)


def main() -> None:
    from serve_app.config.paths import cache_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", type=int, default=3000, help="documents in the corpus (a seeded sample)")
    ap.add_argument("--cache", type=Path, default=None, help="where packages are downloaded and extracted "
                    "(default: the app's cache folder, corpus/)")
    ap.add_argument("--packages", nargs="+", default=list(PACKAGES), help="Debian documentation packages")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    args = ap.parse_args()

    from serve_app.config.settings import VectorSettings
    from serve_app.vector.edge_store import QdrantEdgeStore
    from serve_app.vector.embedder import Embedder
    from serve_app.vector.keywords import KeywordEncoder

    started = time.perf_counter()
    settings = VectorSettings()
    rephrased = {k: v["query"] for k, v in json.loads(REPHRASED.read_text())["queries"].items()}
    c = corpus(args.packages, args.cache or cache_dir() / "corpus", args.sections, rephrased)
    sections: list[Section] = c["sections"]
    t_corpus = time.perf_counter() - started
    packages = ", ".join(f"{p} {v}" for p, v in c["versions"].items())
    print(f"{len(sections)} sections of {c['parsed']} parsed ({packages}); {len(c['missing_rephrased'])} rephrased "
          "keys not found", flush=True)

    embedder, encoder = Embedder(settings.embedder), KeywordEncoder()
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        store = QdrantEdgeStore(Path(tmp) / "documents", embedder.dim, hnsw_ef=settings.hnsw_ef, keywords=encoder)
        try:
            built = build(sections, embedder, encoder, store, settings.chunk_tokens, settings.chunk_overlap)
            print(f"indexed {built['chunks']} chunks ({built['embed_chunks_per_s']:.0f} chunks/s embedded)",
                  flush=True)
            in_corpus = {s.key for s in sections}
            query_sets = {
                "heading": [(s.heading, s.key) for s in sections if s.key in c["unique_heading"]],
                "first_sentence": [(s.first, s.key) for s in sections if s.key in c["unique_first"]],
                "rephrased": [(q, k) for k, q in sorted(rephrased.items()) if k in in_corpus],
            }
            # The app's own breadth: each prefetch brings at least top_k (here HITS) chunks to the fusion.
            candidates = max(HITS, settings.hybrid_candidates)
            results = {kind: evaluate(qs, embedder, encoder, store, candidates) for kind, qs in query_sets.items()}
        finally:
            store.close()

    suggestion = suggest(results)
    for r in results.values():
        for mode in MODES:
            r[mode].pop("reciprocal_ranks")
    report = {
        "packages": c["versions"], "sections": len(sections), "sections_parsed": c["parsed"],
        "chunks": built["chunks"], "chunk_tokens": settings.chunk_tokens, "chunk_overlap": settings.chunk_overlap,
        "embedder": "all-MiniLM-L6-v2", "hits_per_query": HITS, "hybrid_candidates": candidates, "seed": SEED,
        "missing_rephrased": c["missing_rephrased"], "results": results, "suggested_default": suggestion,
        "timings_s": {"corpus": t_corpus, **{k: v for k, v in built.items() if k.endswith("_s")},
                      "total": time.perf_counter() - started},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    for kind, diffs in suggestion["paired_mrr_difference"].items():
        print(f"  {kind}: " + ", ".join(f"{p} {v['mrr_diff']:+.3f} ±{v['se']:.3f}" for p, v in diffs.items()))
    print(f"suggested default: {report['suggested_default']['mode']}; total {report['timings_s']['total']:.0f} s;"
          f" written {args.out}")


if __name__ == "__main__":
    main()
