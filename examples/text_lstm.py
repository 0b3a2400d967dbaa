"""An LSTM reads King James verses word by word and names the book (ten largest books).

The same verses and split as `kjv_tfidf`; the baseline is scikit-learn's logistic
regression on those TF-IDF features. Words outside the 5,000 most frequent training words
map to 1; sequences are padded in front (Keras's pad_sequences default) to 48 words, so
the LSTM's final state follows the verse's last word.

    python examples/text_lstm.py             # 6 epochs, and the baseline
    python examples/text_lstm.py --epochs 2
"""
import argparse
import re
from collections import Counter

import numpy as np
import torch

from bigtrain.data import kjv_tfidf, kjv_verses
from bigtrain.layers import LSTM, Dense, Embedding, Input
from bigtrain.models import Sequential
from bigtrain.optimizers import Adam

VOCAB, STEPS = 5000, 48


def tokenize(texts, vocab=None, steps: int = STEPS):
    """Word ids (B, steps): 0 pads in front, 1 marks a word outside the vocabulary."""
    words = [re.findall(r"[a-z']+", t.lower()) for t in texts]
    if vocab is None:
        counts = Counter(w for ws in words for w in ws)
        vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(VOCAB - 2))}
    ids = np.zeros((len(words), steps), dtype=np.int64)
    for row, ws in enumerate(words):
        seq = [vocab.get(w, 1) for w in ws][-steps:]
        ids[row, steps - len(seq):] = seq
    return ids, vocab


def lstm_classifier(classes: int = 10, steps: int = STEPS, units: int = 64) -> Sequential:
    return Sequential([Input(shape=(steps,), dtype="int64"), Embedding(VOCAB, units),
                       LSTM(units), Dense(classes, activation="softmax")])


def tfidf_baseline() -> float:
    from sklearn.linear_model import LogisticRegression
    (x, y), (x_test, y_test) = kjv_tfidf()
    clf = LogisticRegression(max_iter=1000).fit(x, y.argmax(1))
    return float(clf.score(x_test, y_test.argmax(1)))


def main(epochs: int = 6, train_limit: int | None = None, baseline: bool = True,
         steps: int = STEPS, units: int = 64, test_limit: int | None = None,
         learning_rate: float = 1e-3, batch_size: int = 64, num_classes: int = 10) -> dict:
    """Train the LSTM (and the TF-IDF baseline) and return their test accuracies."""
    torch.manual_seed(0)
    (texts, y), (texts_test, y_test) = kjv_verses(num_classes)
    x, vocab = tokenize(texts[:train_limit], steps=steps)
    x_test, _ = tokenize(texts_test[:test_limit], vocab, steps)
    y_test = y_test[:test_limit]
    model = lstm_classifier(num_classes, steps=steps, units=units)
    model.compile(optimizer=Adam(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y[:train_limit], batch_size=batch_size, epochs=epochs, verbose=0)
    results = {"lstm": float(model.evaluate(x_test, y_test)[1])}
    if baseline:
        results["tfidf_logistic"] = tfidf_baseline()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    lstm_classifier().summary()
    r = main(args.epochs)
    print(f"test accuracy after {args.epochs} epochs: LSTM {r['lstm']:.4f}, TF-IDF logistic "
          f"regression {r['tfidf_logistic']:.4f} (chance about 0.18)")
