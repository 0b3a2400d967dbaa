"""GroupNormalization, GaussianDropout, AlphaDropout and SpatialDropout3D held to Keras 3
(torch backend): outputs and training against Keras, the noise's statistics against the
noise Keras draws, and a save/load round trip."""
import numpy as np
import pytest
import torch

import bigtrain.layers as B
from bigtrain.models import Model, load_model
from tests.api.harness import keras_parity

TINY = 1e-9  # a rate at which Keras's training draws keep every unit: deterministic


@pytest.mark.parametrize("build,shape", [
    (lambda L: [L.Dense(4), L.GroupNormalization(groups=2)], (3, 3, 2)),
    (lambda L: [L.Dense(6), L.GroupNormalization(groups=3, epsilon=1e-5)], (5,)),
    (lambda L: [L.Dense(4), L.GroupNormalization(groups=-1)], (5, 3)),
    (lambda L: [L.Dense(4), L.GroupNormalization(groups=1, center=False)], (5, 3)),
    (lambda L: [L.Dense(4), L.GroupNormalization(groups=2, scale=False,
                                                 beta_initializer="ones")], (5, 3)),
    (lambda L: [L.Dense(3), L.GroupNormalization(groups=2, axis=1)], (4, 3)),  # channels first
    (lambda L: [L.Conv2D(4, 1), L.GroupNormalization(groups=2, axis=-1), L.Dense(2)], (3, 3, 2)),
])
def test_group_normalization_matches_keras(build, shape):
    keras_parity(build, shape)


def test_group_normalization_refuses_groups_that_do_not_divide():
    with pytest.raises(ValueError, match=r"groups=3 must divide the 4 channels"):
        B.GroupNormalization(groups=3)(B.Input(shape=(5, 4)))


@pytest.mark.parametrize("make", [lambda L: L.GaussianDropout(TINY),
                                  lambda L: L.AlphaDropout(TINY),
                                  lambda L: L.SpatialDropout3D(TINY)])
def test_noise_layers_train_as_keras(make):
    keras_parity(lambda L: [L.Dense(3), make(L), L.Dense(2)], (2, 2, 2, 2), tol=1e-4)


def _keras_train_output(layer, x):
    import keras
    return keras.ops.convert_to_numpy(layer(x, training=True))


def _ours(layer, x, training=True):
    layer(B.Input(shape=x.shape[1:]))
    layer.train(training)
    with torch.no_grad():
        return layer(torch.as_tensor(x)).numpy()


def test_gaussian_dropout_noise_is_keras_noise():
    import keras
    x = np.ones((400, 100), "float32")
    theirs = _keras_train_output(keras.layers.GaussianDropout(0.3), x)
    ours = _ours(B.GaussianDropout(0.3), x)
    assert abs(ours.mean() - theirs.mean()) < 0.01
    assert abs(ours.std() / theirs.std() - 1.0) < 0.02  # sqrt(0.3 / 0.7) = 0.65 both
    np.testing.assert_array_equal(_ours(B.GaussianDropout(0.3), x, training=False), x)


def test_alpha_dropout_noise_is_keras_noise():
    import keras
    x = np.random.default_rng(0).normal(size=(400, 100)).astype("float32")
    theirs = _keras_train_output(keras.layers.AlphaDropout(0.2), x)
    ours = _ours(B.AlphaDropout(0.2), x)
    for stat in (np.mean, np.std):
        assert abs(stat(ours) - stat(theirs)) < 0.02
    dropped = np.unique(_ours(B.AlphaDropout(0.2), np.zeros((50, 50), "float32")))
    keras_dropped = np.unique(_keras_train_output(keras.layers.AlphaDropout(0.2),
                                                  np.zeros((50, 50), "float32")))
    np.testing.assert_allclose(dropped, keras_dropped, rtol=1e-6)  # the two values a unit takes
    np.testing.assert_array_equal(_ours(B.AlphaDropout(0.2), x, training=False), x)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_spatial_dropout3d_drops_whole_channels_as_keras(data_format):
    import keras
    x = np.ones((64, 2, 2, 2, 8) if data_format == "channels_last" else (64, 8, 2, 2, 2),
                "float32")
    theirs = _keras_train_output(keras.layers.SpatialDropout3D(0.5, data_format=data_format), x)
    ours = _ours(B.SpatialDropout3D(0.5, data_format=data_format), x)
    np.testing.assert_allclose(np.unique(ours), np.unique(theirs))  # 0 and 1 / (1 - rate)
    channels = ours.reshape(64, 8, 8) if data_format == "channels_first" else \
        ours.reshape(64, 8, 8).transpose(0, 2, 1)  # (sample, channel, cells)
    assert np.all(channels.max(-1) == channels.min(-1))  # one draw per sample and channel
    assert 0.35 < (channels[..., 0] == 0).mean() < 0.65


def test_new_layers_save_and_load(tmp_path):
    inp = B.Input(shape=(2, 2, 2, 4))
    h = B.GroupNormalization(groups=2, gamma_initializer="glorot_uniform")(inp)
    h = B.SpatialDropout3D(0.2, data_format="channels_first")(h)
    h = B.AlphaDropout(0.1, noise_shape=(None, 1, 1, 1, 4))(B.GaussianDropout(0.1)(h))
    model = Model(inp, B.Dense(2)(h))
    path = str(tmp_path / "new.bigtrain")
    model.save(path)
    again = load_model(path)
    x = np.random.default_rng(2).normal(size=(3, 2, 2, 2, 4)).astype("float32")
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6)
    assert [type(layer).__name__ for layer in again.layers[1:]] == \
        [type(layer).__name__ for layer in model.layers[1:]]
