"""BM25 keyword vectors are the same tokens for documents and queries, on every machine and thread: English stop
words dropped, words stemmed, documents weighted by saturated term frequency and length (the IDF part is
Qdrant's), queries one weight per distinct token, and a query of stop words alone is empty (falsy)."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_app.vector.keywords import KeywordEncoder, Sparse

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def enc():
    return KeywordEncoder()


def test_stop_words_only_is_empty(enc):
    q = enc.query("The and of, to a is it!")
    assert q == Sparse([], []) and not q
    assert not enc.documents(["the of and"])[0]
    assert enc.query("the zeppelin") and len(enc.query("the zeppelin").indices) == 1


def test_documents_and_queries_share_tokens(enc):
    doc = enc.documents(["Runners were running to the harbour"])[0]
    q = enc.query("run harbour")
    assert set(q.indices) <= set(doc.indices)  # stemmed alike: running -> run
    assert q.values == [1.0] * len(q.indices)
    # Repeated query words count once.
    assert enc.query("harbour harbour Harbour").indices == enc.query("harbour").indices


def test_document_weights_saturate_and_follow_length(enc):
    once, thrice, long = enc.documents(["zeppelin hangar", "zeppelin zeppelin zeppelin hangar",
                                        "zeppelin " + " ".join(f"word{i}" for i in range(400))])
    w = dict(zip(thrice.indices, thrice.values, strict=True))
    z = enc.query("zeppelin").indices[0]
    one = dict(zip(once.indices, once.values, strict=True))[z]
    assert one < w[z] < 3 * one  # more occurrences weigh more, but not linearly (k saturation)
    assert dict(zip(long.indices, long.values, strict=True))[z] < one  # the same count weighs less in a longer text (b)


def test_encoders_agree_across_instances_and_threads(enc):
    texts = [f"harbour zeppelin word{i} running dogs " * (i % 7 + 1) for i in range(64)]
    ref = enc.documents(texts)
    assert KeywordEncoder().documents(texts) == ref  # token hashes are stable, not per process
    with ThreadPoolExecutor(8) as pool:  # the deployment encodes from worker threads
        assert all(out == ref for out in pool.map(lambda _: enc.documents(texts), range(16)))


def test_avg_len_is_the_length_normalizer():
    short, default = KeywordEncoder(avg_len=8.0), KeywordEncoder()
    text = "zeppelin " + " ".join(f"word{i}" for i in range(30))
    assert short.documents([text])[0].values[0] < default.documents([text])[0].values[0]
    assert short.query("zeppelin") == default.query("zeppelin")
