import numpy as np
import pytest

from bigtrain.layers import Dense, Input
from bigtrain.models import Model


def teacher_data(n=600, features=20, classes=4, seed=0):
    """A learnable problem: labels from a random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    w = rng.normal(size=(features, classes)).astype("float32")
    ids = (x @ w).argmax(1)
    return x, np.eye(classes, dtype="float32")[ids], ids


def seed_like_model(features=20, hidden=32, classes=4, lr=0.01):
    inp = Input(shape=(features,))
    out = Dense(classes, activation="softmax")(Dense(hidden, activation="relu")(inp))
    model = Model(inputs=inp, outputs=out)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  learning_rate=lr)
    return model


def fresh_seed_model():
    """seed_like_model from a cleared session and seed 0, compiled for integer labels."""
    import bigtrain
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = seed_like_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", learning_rate=0.01)
    return model


@pytest.fixture
def data():
    return teacher_data()
