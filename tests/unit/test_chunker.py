"""Chunking invariants: chunks cover the text in order within the token budget, consecutive chunks
overlap, ids depend only on document id and position, blank text gives no chunk."""

from itertools import pairwise

import pytest

from serve_app.vector.chunker import chunk_id, chunk_text
from serve_app.vector.embedder import resolve_embedder

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_embedder("default"))


def test_windows_and_overlap(tokenizer):
    words = [f"word{i}" for i in range(400)]
    text = " ".join(words)
    chunks = chunk_text("d", text, tokenizer, chunk_tokens=50, overlap_tokens=10)
    assert len(chunks) > 5
    for c in chunks:
        n = len(tokenizer(c.text, add_special_tokens=False)["input_ids"])
        assert n <= 50 + 2  # re-tokenizing a cut can merge or split one token at the edges
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert chunks[0].text.startswith("word0") and chunks[-1].text.endswith("word399")
    for a, b in pairwise(chunks):
        assert a.text.split()[-1] in b.text  # overlap


def test_short_and_blank(tokenizer):
    assert [c.text for c in chunk_text("d", "  hello world ", tokenizer, 50, 10)] == ["hello world"]
    assert chunk_text("d", "   \n ", tokenizer, 50, 10) == []


def test_ids_are_stable():
    assert chunk_id("a", 0) == chunk_id("a", 0)
    assert chunk_id("a", 0) != chunk_id("a", 1) != chunk_id("b", 1)


def test_overlap_must_be_smaller(tokenizer):
    with pytest.raises(ValueError):
        chunk_text("d", "x y z", tokenizer, 10, 10)
