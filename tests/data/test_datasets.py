"""Built-in datasets: shapes, dtypes, determinism, disjoint splits, and that the KJV
TF-IDF task is learnable by a linear model."""
import numpy as np
import pytest

from bigtrain.data import TextCorpus, kjv_text, kjv_tfidf, kjv_tfidf_classes, mnist_5k
from bigtrain.data import _bible, datasets


def _rows_as_set(x):
    return {row.tobytes() for row in np.ascontiguousarray(x)}


def test_bible_reader_reads_all_books_in_order():
    names = _bible.book_names()
    assert len(names) == 66 and names[0] == "Genesis" and names[-1] == "Revelation"
    assert sum(len(_bible.book_verses(b)) for b in names) == 31102  # KJV verse count
    assert _bible.book_verses("Genesis")[0].startswith("In the beginning God created")
    # Chapter keys sort numerically: Psalm 119 (176 verses) is not placed after Psalm 11.
    assert _bible.book_verses("John")[-1].startswith("And there are also many other things")


def test_kjv_tfidf_shapes_dtypes_and_classes():
    (x, y), (xt, yt) = kjv_tfidf(num_features=1000, num_classes=10)
    assert x.dtype == xt.dtype == y.dtype == yt.dtype == np.float32
    assert x.shape[1] == xt.shape[1] == 1000 and y.shape[1] == yt.shape[1] == 10
    assert x.shape[0] == y.shape[0] and xt.shape[0] == yt.shape[0]
    # 80/20 stratified split of the verses of the 10 largest books.
    total = sum(len(_bible.book_verses(b)) for b in kjv_tfidf_classes(10))
    assert x.shape[0] + xt.shape[0] == total
    assert abs(xt.shape[0] / total - 0.2) < 0.01
    np.testing.assert_array_equal(y.sum(1), 1.0)  # one-hot
    assert set(np.argmax(y, 1)) == set(np.argmax(yt, 1)) == set(range(10))
    norms = np.linalg.norm(xt, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))


def test_kjv_tfidf_classes_are_largest_books():
    classes = kjv_tfidf_classes(10)
    sizes = [len(_bible.book_verses(b)) for b in classes]
    assert sizes == sorted(sizes, reverse=True)
    smallest_kept = sizes[-1]
    others = set(_bible.book_names()) - set(classes)
    assert all(len(_bible.book_verses(b)) <= smallest_kept for b in others)
    assert classes[0] == "Psalms"


def test_kjv_tfidf_is_deterministic_and_returns_fresh_arrays():
    (x1, y1), (xt1, _) = kjv_tfidf()
    x1[:] = -1.0  # must not corrupt the memoised copy
    (x2, y2), (xt2, _) = kjv_tfidf()
    assert not np.any(x2 == -1.0)
    (x3, _), (xt3, _) = kjv_tfidf()
    np.testing.assert_array_equal(x2, x3)
    np.testing.assert_array_equal(xt1, xt3)
    np.testing.assert_array_equal(y1, y2)


def test_kjv_tfidf_linear_model_learns_the_books():
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression
    (x, y), (xt, yt) = kjv_tfidf()
    # TF-IDF rows are ~99% zeros: the sparse solver path is 10-50x faster than dense.
    clf = LogisticRegression(max_iter=300).fit(csr_matrix(x), y.argmax(1))
    acc = clf.score(csr_matrix(xt), yt.argmax(1))
    assert acc > 0.5, f"test accuracy {acc:.3f}; chance is about {yt.mean(0).max():.3f}"


def test_kjv_split_is_disjoint_complete_and_seeded():
    # The split is defined on verse indices: some verses are worded identically, so
    # comparing texts or feature rows could not prove the splits disjoint.
    verses, labels, tr, te = datasets._kjv_verses_split(3, 0.2, 0)
    assert not set(tr) & set(te)
    assert sorted(np.concatenate([tr, te])) == list(range(len(verses)))
    for c in range(3):  # stratified: each book keeps ~20% of its verses for test
        held_out = np.sum(labels[te] == c) / np.sum(labels == c)
        assert abs(held_out - 0.2) < 0.01
    _, _, tr_again, _ = datasets._kjv_verses_split(3, 0.2, 0)
    _, _, tr_other, _ = datasets._kjv_verses_split(3, 0.2, 1)
    np.testing.assert_array_equal(tr, tr_again)
    assert not np.array_equal(np.sort(tr), np.sort(tr_other))


@pytest.mark.parametrize("kwargs", [dict(num_classes=1), dict(num_classes=67),
                                    dict(num_features=0), dict(test_fraction=1.0)])
def test_kjv_tfidf_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        kjv_tfidf(**kwargs)


def test_mnist_5k_ranges_split_and_determinism():
    (x, y), (xt, yt) = mnist_5k()
    assert x.shape == (4000, 784) and xt.shape == (1000, 784)
    assert x.dtype == xt.dtype == np.float32 and y.dtype == yt.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 400))   # stratified
    np.testing.assert_array_equal(np.bincount(yt), np.full(10, 100))
    assert not _rows_as_set(x) & _rows_as_set(xt)  # no image in both splits
    (x2, y2), _ = mnist_5k()
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_kjv_text_round_trip_and_split():
    corpus = kjv_text()
    assert isinstance(corpus, TextCorpus) and corpus.vocab_size == 256
    assert corpus.train.dtype == corpus.val.dtype == np.int64
    assert corpus.decode(corpus.train[:16]) == "In the beginning"
    assert corpus.decode(corpus.val[-6:]) == "Amen.\n"  # Revelation 22:21 ends the text
    assert corpus.train[-1] == ord("\n")  # validation starts on a fresh line
    total = corpus.train.size + corpus.val.size
    assert abs(corpus.val.size / total - 0.1) < 0.001
    text = "Let there be light: and there was light. \u2019 \u00e9"
    ids = corpus.encode(text)
    assert ids.dtype == np.int64 and ids.max() < 256
    assert corpus.decode(ids) == text
    np.testing.assert_array_equal(kjv_text().train, corpus.train)


def test_text_windows_and_batches_are_next_token_pairs():
    corpus = TextCorpus(train=TextCorpus.encode("abcdefghij"), val=TextCorpus.encode("xyz!"))
    x, y = corpus.windows("train", block_size=3)
    assert x.shape == y.shape == (3, 3)
    assert [corpus.decode(r) for r in x] == ["abc", "def", "ghi"]
    assert [corpus.decode(r) for r in y] == ["bcd", "efg", "hij"]
    x, y = corpus.windows("train", block_size=4, stride=1, max_windows=2)
    assert [corpus.decode(r) for r in x] == ["abcd", "bcde"]
    bx, by = corpus.batches("train", 4, 16, np.random.default_rng(0))
    assert bx.shape == by.shape == (16, 4)
    np.testing.assert_array_equal(bx[:, 1:], by[:, :-1])
    np.testing.assert_array_equal(by - bx, 1)  # consecutive letters in "abc...j"
    bx2, _ = corpus.batches("train", 4, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(bx, bx2)
    with pytest.raises(ValueError, match="block_size"):
        corpus.windows("val", block_size=4)
    with pytest.raises(ValueError, match="split"):
        corpus.windows("test", block_size=2)


def test_text_corpus_validates_its_arrays():
    with pytest.raises(TypeError, match="int64"):
        TextCorpus(train=np.zeros(4, dtype=np.int32), val=np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="outside"):
        TextCorpus(train=np.array([300], dtype=np.int64), val=np.zeros(1, dtype=np.int64))


def test_data_fraction_keeps_a_prefix_of_each_split_and_says_so(monkeypatch):
    (x, y), (xt, yt) = mnist_5k()
    full = kjv_text()
    monkeypatch.setenv(datasets.FRACTION_ENV, "0.1")
    with pytest.warns(UserWarning, match="mnist_5k keeps 400 of 4,000"):
        (xs, ys), (xts, yts) = mnist_5k()
    assert len(xs) == 400 and len(xts) == 100
    np.testing.assert_array_equal(xs, x[:400])
    np.testing.assert_array_equal(yts, yt[:100])
    assert len(np.unique(ys)) == 10  # the splits are shuffled: every digit is there
    with pytest.warns(UserWarning, match="kjv_text keeps"):
        small = kjv_text()
    np.testing.assert_array_equal(small.train, full.train[:len(small.train)])
    assert len(small.train) == -(-len(full.train) // 10)  # ceil(n / 10)


def test_data_fraction_applies_to_the_verse_texts_too(monkeypatch):
    from bigtrain.data import kjv_verses
    (texts, y), (texts_test, _) = kjv_verses()
    monkeypatch.setenv(datasets.FRACTION_ENV, "0.1")
    with pytest.warns(UserWarning, match="kjv_verses keeps 1,098 of 10,972"):
        (small, ys), (small_test, _) = kjv_verses()
    assert small == texts[:1098] and len(small_test) == -(-len(texts_test) // 10)
    np.testing.assert_array_equal(ys, y[:1098])


@pytest.mark.parametrize("value", ["0", "1.5", "ten", "-0.1"])
def test_data_fraction_rejects_values_outside_0_1(monkeypatch, value):
    monkeypatch.setenv(datasets.FRACTION_ENV, value)
    with pytest.raises(ValueError, match="BIGTRAIN_DATA_FRACTION must be a number in"):
        mnist_5k()
