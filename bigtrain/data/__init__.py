"""Built-in real datasets (bundled with installed packages: nothing is downloaded).

Example:
    >>> from bigtrain.data import kjv_tfidf, mnist_5k, kjv_text
    >>> (x, y), (x_test, y_test) = mnist_5k()
"""
from bigtrain.data.datasets import (kjv_text, kjv_tfidf, kjv_tfidf_classes, kjv_verses,
                                    mnist_5k)
from bigtrain.data.files import files
from bigtrain.data.text import BYTE_VOCAB_SIZE, TextCorpus

__all__ = ["BYTE_VOCAB_SIZE", "TextCorpus", "kjv_text", "kjv_tfidf", "kjv_tfidf_classes",
           "kjv_verses", "mnist_5k", "files"]
