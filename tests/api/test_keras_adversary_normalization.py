"""Normalization layers where Keras's numbers depend on more than the layer's own options,
held to Keras 3 (torch backend): BatchNormalization training on a masked sequence, and
Normalization's adapted statistics when the model is frozen and unfrozen again."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Sequential
from tests.api.harness import keras_parity

# Embedding(mask_zero=True) ids: trailing padding, a full row, a row of one real step
IDS = np.array([[3, 1, 2, 4, 0, 0], [1, 2, 0, 0, 0, 0], [4, 4, 4, 4, 4, 1], [2, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("build", [
    # the padding's embedding rows took part in the batch statistics: weights 0.09 off
    # Keras after two steps, the moving mean and variance too
    lambda L: [L.Embedding(5, 4, mask_zero=True), L.BatchNormalization(momentum=0.5),
               L.LSTM(3)],
    lambda L: [L.Embedding(5, 4, mask_zero=True), L.Dense(3),
               L.BatchNormalization(center=False, momentum=0.8), L.GRU(2)],
], ids=["embedding-bn-lstm", "dense-bn-no-center-gru"])
def test_batchnorm_statistics_leave_out_masked_steps_as_keras(build):
    keras_parity(build, (6,), input_dtype="int64", x=IDS)


def test_batchnorm_on_a_masked_input_without_a_last_feature_axis_is_refused():
    import torch
    bn = B.BatchNormalization(axis=1, name="bn")
    bn(B.Input((4, 3)))
    bn.train()
    with pytest.raises(ValueError, match="'bn'.*mask.*axis=-1"):
        bn(torch.ones(2, 4, 3), mask=torch.ones(2, 4, dtype=torch.bool))


def _unfrozen(L, make):
    import keras
    rng = np.random.default_rng(0)
    data = rng.normal(2.0, 3.0, size=(32, 4)).astype("float32")
    norm = L.Normalization()
    norm.adapt(data)
    model = make([(keras.Input if L is keras.layers else B.Input)((4,)), norm, L.Dense(1)])
    model.trainable = False
    model.trainable = True
    norm.trainable = False
    norm.trainable = True
    return model, data


def test_normalization_statistics_never_train_after_unfreezing_as_keras():
    """`model.trainable = True` made the adapted mean and variance trainable: Adam moved
    them (0.008 off Keras after 8 steps) and trainable_weights listed them."""
    import keras
    keras.utils.set_random_seed(0)
    kmodel, data = _unfrozen(keras.layers, keras.Sequential)
    model, _ = _unfrozen(B, Sequential)
    model.set_weights(kmodel.get_weights())
    y = np.random.default_rng(1).normal(size=(32, 1)).astype("float32")
    for m in (kmodel, model):
        m.compile(optimizer="adam", loss="mse")
        m.fit(data, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    assert len(model.trainable_weights) == len(kmodel.trainable_weights) == 2
    assert len(model.non_trainable_weights) == len(kmodel.non_trainable_weights) == 3
    for got, want in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("build", [
    lambda L: [L.Dense(4), L.LayerNormalization(rms_scaling=True)],
    lambda L: [L.Dense(4), L.LayerNormalization(axis=[-2, -1], rms_scaling=True,
                                                epsilon=0.1, center=True)],
], ids=["last-axis", "two-axes"])
def test_layer_normalization_rms_scaling_matches_keras(build):
    """rms_scaling=True was refused: x * rsqrt(var(x) + epsilon) * gamma in Keras."""
    keras_parity(build, (3, 5))
