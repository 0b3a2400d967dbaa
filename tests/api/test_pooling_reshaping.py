"""Pooling, shape, noise and preprocessing layers held to Keras 3's numbers."""
import numpy as np
import pytest
import torch

from bigtrain.layers import (AveragePooling1D, AveragePooling2D, Dense, GaussianNoise, Input,
                             Lambda, MaxPooling2D, Normalization, SpatialDropout2D)
from bigtrain.models import Model, Sequential
from tests.api.harness import keras_parity


@pytest.mark.parametrize("build,shape", [
    (lambda L: L.MaxPooling1D(), (7, 2)),
    (lambda L: L.MaxPooling1D(3, strides=2, padding="same"), (8, 2)),
    (lambda L: L.MaxPooling2D(), (5, 6, 2)),
    (lambda L: L.MaxPooling2D((3, 2), strides=2, padding="same"), (7, 6, 2)),
    (lambda L: L.MaxPooling3D(2, padding="same"), (3, 4, 5, 2)),
    (lambda L: L.AveragePooling1D(2, padding="same"), (7, 2)),
    (lambda L: L.AveragePooling2D(2), (5, 6, 2)),
    (lambda L: L.AveragePooling2D(3, strides=1, padding="same"), (5, 4, 2)),
    (lambda L: L.AveragePooling2D(2, data_format="channels_first"), (2, 4, 6)),
    (lambda L: L.AveragePooling3D(2), (4, 4, 3, 2)),
    (lambda L: L.GlobalMaxPooling1D(), (5, 3)),
    (lambda L: L.GlobalAveragePooling1D(), (5, 3)),
    (lambda L: L.GlobalMaxPooling2D(keepdims=True), (4, 5, 3)),
    (lambda L: L.GlobalAveragePooling2D(), (4, 5, 3)),
    (lambda L: L.ZeroPadding1D((1, 2)), (4, 3)),
    (lambda L: L.ZeroPadding2D(((1, 0), (2, 1))), (3, 4, 2)),
    (lambda L: L.Cropping1D((1, 2)), (6, 3)),
    (lambda L: L.Cropping2D(((1, 0), (0, 2))), (4, 5, 2)),
    (lambda L: L.UpSampling1D(3), (4, 2)),
    (lambda L: L.UpSampling2D((2, 3)), (3, 2, 2)),
    (lambda L: L.UpSampling2D((2, 3), interpolation="bilinear"), (3, 4, 2)),
    (lambda L: L.UpSampling2D(3, data_format="channels_first", interpolation="bilinear"),
     (2, 3, 4)),
    (lambda L: [L.Conv2D(2, 2), L.UpSampling2D(interpolation="bilinear"), L.Conv2D(2, 3)],
     (5, 5, 2)),
    (lambda L: L.Permute((2, 1)), (4, 3)),
    (lambda L: L.RepeatVector(3), (4,)),
    (lambda L: L.Rescaling(1 / 255, offset=-0.5), (4,)),
    # training-time randomness off: Keras and bigtrain agree at inference
    (lambda L: L.SpatialDropout1D(0.5), (4, 3)),
    (lambda L: L.SpatialDropout2D(0.5), (3, 4, 3)),
    (lambda L: L.GaussianNoise(0.3), (4,)),
    # with weights around them, one SGD step too
    (lambda L: [L.Conv2D(3, 2), L.MaxPooling2D(), L.Flatten(), L.Dense(2)], (5, 5, 2)),
    (lambda L: [L.Conv1D(3, 2), L.AveragePooling1D(2, padding="same"),
                L.GlobalMaxPooling1D(), L.RepeatVector(2), L.Dense(2)], (6, 2)),
])
def test_layers_match_keras(build, shape):
    keras_parity(build, shape)


def test_uneven_same_average_pooling_excludes_padding():
    # pool 3, stride 2 on 6 steps: the last window holds steps 4, 5 and one padding cell;
    # Keras's definition (TensorFlow's, JAX's) averages only the real cells: (x4 + x5) / 2.
    # Keras 3's torch backend replicates the edge there instead ((x4 + 2 x5) / 3 = 4.67), so
    # this case is checked by hand rather than against that backend.
    layer = AveragePooling1D(3, strides=2, padding="same")
    x = torch.arange(6.0).reshape(1, 6, 1)
    layer(Input(shape=(6, 1)))
    np.testing.assert_allclose(layer(x).flatten().numpy(), [1.0, 3.0, 4.5])
    square = AveragePooling2D(2, strides=1, padding="same")
    square(Input(shape=(2, 2, 1)))
    out = square(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)).flatten()
    np.testing.assert_allclose(out.numpy(), [2.5, 3.0, 3.5, 4.0])


def test_normalization_adapt_matches_keras():
    import keras
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(50, 3, 4)).astype("float32")
    kn = keras.layers.Normalization()
    kn.adapt(data)
    kmodel = keras.Sequential([keras.Input((3, 4)), kn])
    norm = Normalization()
    norm.adapt(data)
    model = Sequential([Input(shape=(3, 4)), norm])
    x = rng.normal(size=(5, 3, 4)).astype("float32")
    np.testing.assert_allclose(model.predict(x), kmodel.predict(x, verbose=0), atol=1e-5)
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert model.count_params() == kmodel.count_params() == 9
    fixed = Sequential([Input(shape=(2,)), Normalization(mean=[1.0, 2.0], variance=[4.0, 1.0]),
                        Dense(1)])
    fixed.compile(optimizer="sgd", loss="mse")
    fixed.fit(np.ones((4, 2), "float32"), np.ones((4, 1), "float32"), verbose=0)
    np.testing.assert_array_equal(fixed.layers[0].mean.numpy(), [1.0, 2.0])  # not trained
    assert [w.shape for w in fixed.get_weights()] == [(2, 1), (1,)]  # constants, as Keras  # not trained


def test_random_layers_act_only_in_training():
    x = torch.ones(64, 4, 4, 8)
    drop = SpatialDropout2D(0.5)
    drop(Input(shape=(4, 4, 8)))
    y = drop(x, training=True)  # called on its own it infers, as Keras's
    per_channel = y.reshape(64, 16, 8)
    assert torch.all(per_channel.amax(1) == per_channel.amin(1))  # whole channels dropped
    assert 0.3 < (per_channel[:, 0] == 0).float().mean() < 0.7
    drop.eval()
    assert torch.equal(drop(x), x)
    noise = GaussianNoise(0.5)
    noise(Input(shape=(4, 4, 8)))
    assert 0.4 < (noise(x, training=True) - x).std() < 0.6
    noise.eval()
    assert torch.equal(noise(x), x)


def test_lambda_runs_and_refuses_save(tmp_path):
    inp = Input(shape=(4,))
    out = Dense(2)(Lambda(lambda t: t[:, :3] * 2.0, name="twice")(inp))
    model = Model(inp, out)
    assert model.output_shapes == [(2,)] and model.layers[2].input_shape_ == (3,)
    with pytest.raises(ValueError, match="Lambda layer 'twice'.*pickle.*save_weights"):
        model.save(str(tmp_path / "m.bigtrain"))


def test_pooling_window_larger_than_input():
    with pytest.raises(ValueError, match=r"MaxPooling2D 'pool'.*window \(3\).*input \(2\)"):
        MaxPooling2D(3, name="pool")(Input(shape=(2, 5, 1)))
