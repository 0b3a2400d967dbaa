"""Every layer that takes `activity_regularizer` keeps it through save and load_model
(LSTM, GRU, Activation, Flatten, Dropout... whose get_config does not list the
weight options): the loaded model's evaluate adds the same penalty as Keras 3 (torch
backend) with the same weights, and as the model before saving."""
import keras
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Sequential, load_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 5, 3)).astype("float32")
Y = RNG.normal(size=(8, 2)).astype("float32")

STACKS = {
    "recurrent": lambda L: [L.LSTM(4, return_sequences=True, activity_regularizer="l2"),
                            L.GRU(3, activity_regularizer="l1"),
                            L.Dense(2)],
    # (Keras's SimpleRNN takes activity_regularizer and drops it: none given here)
    "plain": lambda L: [L.SimpleRNN(4, return_sequences=True),
                        L.Flatten(activity_regularizer="l2"),
                        L.Activation("tanh", activity_regularizer="l1"),
                        L.Dropout(0.5, activity_regularizer="l2"),
                        L.Dense(2)],
}


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_activity_regularizer_survives_save_and_load(stack, tmp_path):
    keras.utils.set_random_seed(0)
    km = keras.Sequential([keras.Input((5, 3)), *STACKS[stack](keras.layers)])
    bm = Sequential([B.Input((5, 3)), *STACKS[stack](B)])
    bm.set_weights(km.get_weights())
    km.compile("sgd", "mse")
    bm.compile("sgd", "mse")
    bm.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    k = km.evaluate(X, Y, verbose=0)
    plain = float(np.mean((km.predict(X, verbose=0) - Y) ** 2))
    assert k > plain + 1e-3  # the penalties count in Keras's loss
    np.testing.assert_allclose([bm.evaluate(X, Y), again.evaluate(X, Y)], [k, k], rtol=1e-5)
    assert _regularizers(again) == _regularizers(bm) == _regularizers(km)


def _regularizers(model) -> list[tuple[str, list]]:
    """(class, rounded factors) of each layer's activity_regularizer, where it has one."""
    regs = [getattr(layer, "activity_regularizer", None) for layer in model.layers]
    return [(type(r).__name__, [round(float(v), 6) for v in r.get_config().values()])
            for r in regs if r is not None]
