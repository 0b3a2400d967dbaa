"""Time-step masks through the layers that pass them on, held to Keras 3 (torch backend)."""
import numpy as np
import pytest

import bigtrain.layers as B
from tests.api.harness import keras_parity

RIGHT = np.array([[3, 1, 2, 4, 0, 0], [1, 2, 0, 0, 0, 0], [4, 4, 4, 4, 4, 1], [2, 0, 0, 0, 0, 0]])
TINY = 1e-9  # a rate at which Keras's training draws keep every unit: deterministic


@pytest.mark.parametrize("drop", ["SpatialDropout1D", "GaussianDropout", "AlphaDropout",
                                  "GaussianNoise"])
def test_noise_layers_keep_the_mask_in_training(drop):
    """Embedding(mask_zero) -> noise -> LSTM: in fit the LSTM must still skip the padding
    (SpatialDropout1D dropped the mask: weights 0.1 off Keras after three steps)."""
    def build(L):
        noise = L.GaussianNoise(0.0) if drop == "GaussianNoise" else getattr(L, drop)(TINY)
        return [L.Embedding(5, 3, mask_zero=True), noise, L.LSTM(3), L.Dense(2)]
    keras_parity(build, (6,), input_dtype="int64", x=RIGHT.astype("int64"), tol=1e-4)


MAKERS = {
    "SpatialDropout1D": lambda L: L.SpatialDropout1D(0.2),
    "GaussianDropout": lambda L: L.GaussianDropout(0.2),
    "AlphaDropout": lambda L: L.AlphaDropout(0.2),
    "GaussianNoise": lambda L: L.GaussianNoise(0.1),
    "Dropout": lambda L: L.Dropout(0.2),
    "GroupNormalization": lambda L: L.GroupNormalization(groups=2),
    "LayerNormalization": lambda L: L.LayerNormalization(),
    "BatchNormalization": lambda L: L.BatchNormalization(),
    "Normalization": lambda L: L.Normalization(mean=0.5, variance=2.0),
    "Rescaling": lambda L: L.Rescaling([1.0, 2.0, 3.0, 4.0]),
    "Dense": lambda L: L.Dense(4),
    "Activation": lambda L: L.Activation("relu"),
    "LSTM_sequences": lambda L: L.LSTM(4, return_sequences=True),
    "LSTM": lambda L: L.LSTM(4),
    "Conv1D": lambda L: L.Conv1D(4, 1),
    "GlobalMaxPooling1D": lambda L: L.GlobalMaxPooling1D(),
    "Flatten": lambda L: L.Flatten(),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_a_mask_is_passed_on_exactly_where_keras_passes_it(name):
    """No layer may drop a mask that Keras passes on (or make one Keras does not): the
    output is masked as in Keras, or the layer refuses the masked input with an error."""
    import keras
    ids = RIGHT[:, :5]
    kout = MAKERS[name](keras.layers)(keras.layers.Embedding(5, 4, mask_zero=True)(ids))
    keras_masked = getattr(kout, "_keras_mask", None) is not None
    inp = B.Input(shape=(5,), dtype="int64")
    try:
        ours = MAKERS[name](B)(B.Embedding(5, 4, mask_zero=True)(inp)).masked
    except ValueError as e:
        assert "mask" in str(e)
        return
    assert ours == keras_masked
