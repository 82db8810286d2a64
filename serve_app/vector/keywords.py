"""BM25 keyword vectors, computed on the app's side with Qdrant Edge's BM25 (English stop words and stemmer),
so every backend (Edge, qdrant-client local and remote) stores and searches with the same tokens.

A document's vector holds the term-frequency part of BM25 only (saturation ``k``, length normalization ``b``
against ``avg_len``); the IDF part is applied by Qdrant at query time, from the collection's sparse vector
config (modifier IDF), so it follows the corpus as documents come and go. A query's vector is weight 1.0
per distinct token."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sparse:
    """A sparse vector: token hashes and their weights. False when empty (the text had only stop words)."""

    indices: list[int]
    values: list[float]

    def __bool__(self) -> bool:
        return bool(self.indices)


class KeywordEncoder:
    def __init__(self, avg_len: float = 256.0):
        """``avg_len`` is the typical chunk length in words. Documents written with different values weigh
        term frequencies slightly differently, so keep it fixed for a collection."""
        import qdrant_edge as qe

        self.avg_len = avg_len
        # k and b stay at BM25's usual 1.2 and 0.75 (Qdrant's defaults as well).
        self._bm25 = qe.Bm25(qe.Bm25Config(avg_len=avg_len, language="english"))

    def documents(self, texts: list[str]) -> list[Sparse]:
        return [_sparse(self._bm25.embed_document(t)) for t in texts]

    def query(self, text: str) -> Sparse:
        return _sparse(self._bm25.embed_query(text))


def _sparse(v) -> Sparse:
    return Sparse(list(v.indices), [float(x) for x in v.values])
