"""Normalization (given statistics, axis=None, several axes) and per-channel Rescaling, held
to Keras 3 (torch backend)."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model, load_model
from tests.api.harness import keras_parity

RNG = np.random.default_rng(0)


def _pair(layer_of, shape):
    """The same one-layer-then-Dense model in Keras and bigtrain, Keras's weights copied."""
    import keras
    keras.utils.set_random_seed(0)
    ki = keras.Input(shape=shape)
    kmodel = keras.Model(ki, keras.layers.Dense(2)(layer_of(keras.layers)(ki)))
    bi = B.Input(shape=shape)
    model = Model(bi, B.Dense(2)(layer_of(B)(bi)))
    return kmodel, model


@pytest.mark.parametrize("axis,mean,shape", [
    (-1, [1.0, 2.0, 3.0, 4.0], (4,)),
    (-1, 2.0, (3, 4)),
    (None, 2.0, (3, 4)),
    ((1, 2), [1.0, 2.0, 3.0, 4.0], (3, 4)),   # a 1-d mean stands for the last kept axis
    ((1, 2), np.arange(12.0).reshape(3, 4), (3, 4)),
])
def test_given_statistics_are_constants_as_in_keras(axis, mean, shape, tmp_path):
    variance = np.square(np.asarray(mean)) + 1.0

    def layer_of(L):
        return L.Normalization(axis=axis, mean=mean, variance=variance)
    kmodel, model = _pair(layer_of, shape)
    assert model.count_params() == kmodel.count_params()  # no weights for the statistics
    model.set_weights(kmodel.get_weights())  # Keras's list: the Dense kernel and bias only
    x = RNG.normal(size=(5, *shape)).astype("float32")
    np.testing.assert_allclose(model.predict(x), kmodel.predict(x, verbose=0), atol=1e-5)
    path = str(tmp_path / "norm.bigtrain")
    model.save(path)  # the statistics travel in the configuration
    np.testing.assert_allclose(load_model(path).predict(x), model.predict(x), rtol=1e-6)


@pytest.mark.parametrize("axis", [None, (1, 2), -1, 2, (-2,)])
def test_adapt_over_any_axes_matches_keras(axis):
    import keras
    data = RNG.normal(3.0, 2.0, size=(40, 3, 4)).astype("float32")
    kn = keras.layers.Normalization(axis=axis)
    kn.adapt(data)
    kmodel = keras.Sequential([keras.Input((3, 4)), kn])
    norm = B.Normalization(axis=axis)
    norm.adapt(data)
    model = Model(inp := B.Input(shape=(3, 4)), norm(inp))
    assert [w.shape for w in model.get_weights()] == [w.shape for w in kmodel.get_weights()]
    for ours, theirs in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    x = RNG.normal(size=(5, 3, 4)).astype("float32")
    np.testing.assert_allclose(model.predict(x), kmodel.predict(x, verbose=0), atol=1e-5)


def test_normalization_refuses_the_batch_axis():
    with pytest.raises(ValueError, match=r"axis=\(0,\).*batch axis 0"):
        B.Normalization(axis=0)(B.Input(shape=(4,)))


@pytest.mark.parametrize("scale,offset,shape", [
    ([1.0, 2.0, 3.0], 0.0, (4, 3)),
    ([0.5, 2.0, -1.0], [1.0, 0.0, -1.0], (2, 2, 3)),
    (np.arange(1.0, 7.0).reshape(2, 3), 0.5, (2, 3)),
])
def test_per_channel_rescaling_matches_keras(scale, offset, shape, tmp_path):
    keras_parity(lambda L: [L.Rescaling(scale, offset=offset), L.Dense(2)], shape)
    model = Model(inp := B.Input(shape=shape), B.Rescaling(scale, offset=offset)(inp))
    assert model.count_params() == 0
    path = str(tmp_path / "rescale.bigtrain")
    model.save(path)
    x = RNG.normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(load_model(path).predict(x), model.predict(x))


def test_rescaling_refuses_a_scale_that_does_not_fit():
    with pytest.raises(ValueError,
                       match=r"Rescaling .*shape \(2,\) does not broadcast.*\(None, 4, 3\)"):
        B.Rescaling([1.0, 2.0])(B.Input(shape=(4, 3)))
