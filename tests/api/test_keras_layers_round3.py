"""Keras-style layers held to Keras 3 (torch backend) where their numbers or arguments
depend on less common options: TimeDistributed around a BatchNormalization in training,
Bidirectional with its own backward layer, Flatten(data_format="channels_first"),
BatchNormalization's weight regularizers and constraints, and the refusals of sizes that
would make empty outputs."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model
from tests.api.harness import keras_parity


@pytest.mark.parametrize("build, shape", [
    # one (B * T) batch: statistics over every step at once, where Keras takes each
    # step's own; gamma and beta were 0.43 off Keras after one SGD step
    (lambda L: L.TimeDistributed(L.BatchNormalization(momentum=0.5)), (3, 2)),
    (lambda L: [L.TimeDistributed(L.Dense(4, use_bias=False)),
                L.TimeDistributed(L.BatchNormalization(center=False, epsilon=0.01)),
                L.GRU(2)], (5, 3)),
], ids=["bn", "dense-bn-gru"])
def test_time_distributed_batchnorm_trains_per_step_as_keras(build, shape):
    keras_parity(build, shape)


def test_time_distributed_batchnorm_moving_statistics_move_once_per_step():
    import keras
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(4, 3, 2)).astype("float32")
    y = rng.normal(size=(4, 3, 2)).astype("float32")
    moving = []
    for L, inp, make in ((keras.layers, keras.Input, keras.Model), (B, B.Input, Model)):
        i = inp(shape=(3, 2))
        model = make(i, L.TimeDistributed(L.BatchNormalization(momentum=0.5))(i))
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        moving.append(model.get_weights()[2:])  # moving mean and variance
    for got, want in zip(moving[1], moving[0]):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("build", [
    lambda L: L.Bidirectional(L.LSTM(3, return_sequences=True), backward_layer=L.GRU(
        3, go_backwards=True, return_sequences=True)),
    # the forward layer reads backwards, the given backward one forwards
    lambda L: L.Bidirectional(L.SimpleRNN(3, go_backwards=True, return_sequences=True),
                              backward_layer=L.SimpleRNN(3, return_sequences=True),
                              merge_mode="sum"),
    lambda L: L.Bidirectional(L.SimpleRNN(3, go_backwards=True),
                              backward_layer=L.SimpleRNN(3), merge_mode="mul"),
], ids=["lstm-gru", "reversed-sequences", "reversed-last"])
def test_bidirectional_backward_layer_matches_keras(build):
    """backward_layer= was refused: the given layer is the backward pass, its weights
    after the forward layer's, as Keras."""
    keras_parity(build, (4, 2))


def test_bidirectional_backward_layer_survives_a_config_round_trip():
    inp = B.Input((4,))
    h = B.Embedding(5, 3, mask_zero=True)(inp)
    h = B.Bidirectional(B.LSTM(2, return_sequences=True), backward_layer=B.GRU(
        2, go_backwards=True, return_sequences=True, name="back"))(h)
    model = Model(inputs=inp, outputs=h)
    clone = Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = np.array([[1, 2, 0, 0], [3, 4, 1, 0]])
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    assert type(clone.layers[2].backward_layer).__name__ == "GRU"


@pytest.mark.parametrize("make, match", [
    # Keras refuses a forward layer that reads backwards with the default backward copy;
    # bigtrain silently swapped the directions
    (lambda: B.Bidirectional(B.SimpleRNN(3, go_backwards=True)), "both have go_backwards=True"),
    (lambda: B.Bidirectional(B.SimpleRNN(3), backward_layer=B.SimpleRNN(
        3, go_backwards=True, return_sequences=True)), "return_sequences=True but the forward"),
    (lambda: B.Bidirectional(B.SimpleRNN(3), backward_layer=B.SimpleRNN(
        4, go_backwards=True)), "units=4"),
    (lambda: B.Bidirectional(B.SimpleRNN(3), backward_layer=B.Dense(3)),
     "backward_layer must be a SimpleRNN"),
])
def test_bidirectional_refuses_backward_layers_keras_refuses(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("build, shape", [
    (lambda L: [L.Flatten(data_format="channels_first"), L.Dense(2)], (2, 3, 4)),
    (lambda L: [L.Conv2D(3, 2, data_format="channels_first"),
                L.Flatten(data_format="channels_first"), L.Dense(2)], (2, 4, 3)),
    (lambda L: [L.Flatten(data_format="channels_first"), L.Dense(2)], (5,)),
], ids=["3d", "after-conv", "2d"])
def test_flatten_channels_first_orders_as_keras(build, shape):
    """data_format= was refused; Keras flattens (B, C, ...) in (B, ..., C) order, so the
    Dense kernel rows after it line up only with that order."""
    keras_parity(build, shape)


def test_flatten_data_format_round_trips_and_refuses_unknown_values():
    layer = B.Flatten(**B.Flatten(data_format="channels_first").get_config())
    assert layer.data_format == "channels_first"
    with pytest.raises(ValueError, match="data_format must be"):
        B.Flatten(data_format="channels_middle")


def _bn_options(L):
    import keras
    import bigtrain.api.constraints as C
    max_norm = (keras.constraints if L is keras.layers else C).MaxNorm(0.5)
    return L.BatchNormalization(gamma_regularizer="l2", beta_regularizer="l1",
                                gamma_constraint=max_norm, beta_constraint="non_neg",
                                momentum=0.5, renorm=False)


def test_batchnorm_weight_regularizers_and_constraints_match_keras():
    """gamma_/beta_regularizer and _constraint (and renorm=False, Keras's default) were
    refused; the penalties join the loss and the constraints bind after each step."""
    keras_parity(_bn_options, (3,))


def test_batchnorm_options_round_trip_and_renorm_is_refused():
    layer = _bn_options(B)
    config = layer.get_config()
    assert config["gamma_regularizer"] is not None and config["beta_constraint"] is not None
    clone = B.BatchNormalization(**config)
    assert clone.get_config() == config
    with pytest.raises(ValueError, match="renorm=True.*not supported"):
        B.BatchNormalization(renorm=True)


@pytest.mark.parametrize("make, match", [
    (lambda: B.UpSampling2D(0), "size must be a positive integer or 2 of them"),
    (lambda: B.UpSampling2D((2, 0)), "size must be a positive integer"),
    (lambda: B.UpSampling1D(-1), "size must be a positive integer"),
    (lambda: B.RepeatVector(0), "n must be a positive integer"),
    (lambda: B.Embedding(0, 3), "input_dim must be a positive integer"),
    (lambda: B.Embedding(3, -1), "output_dim must be a positive integer"),
    (lambda: B.GaussianNoise(-0.1), "stddev must be a number >= 0"),
])
def test_sizes_that_make_empty_or_undefined_outputs_are_refused_as_keras(make, match):
    """Keras refuses these in the constructor; bigtrain built empty (None, 0, ...) outputs
    or a noise of negative spread."""
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_integers_still_work_as_sizes():
    assert B.UpSampling2D(np.int64(2)).size == (2, 2)
    assert B.RepeatVector(np.int64(3)).n == 3
    assert B.Embedding(np.int64(4), 2).input_dim == 4


@pytest.mark.parametrize("make", [
    lambda fmt: B.GlobalAveragePooling1D(data_format=fmt),
    lambda fmt: B.GlobalMaxPooling2D(data_format=fmt),
    lambda fmt: B.UpSampling2D(data_format=fmt),
    lambda fmt: B.UpSampling3D(data_format=fmt),
    lambda fmt: B.ZeroPadding2D(data_format=fmt),
    lambda fmt: B.Cropping3D(data_format=fmt),
    lambda fmt: B.Conv2D(2, 2, data_format=fmt),
    lambda fmt: B.MaxPooling1D(data_format=fmt),
], ids=["gap1d", "gmp2d", "up2d", "up3d", "zp2d", "crop3d", "conv2d", "maxpool1d"])
def test_data_format_is_checked_and_case_free_as_keras(make):
    """A misspelt data_format passed as channels_first (global poolings, padding, cropping,
    upsampling) without a word; Keras refuses it, and takes any case."""
    with pytest.raises(ValueError, match="data_format must be 'channels_last' or "
                                         "'channels_first', got 'channels_frist'"):
        make("channels_frist")
    assert make("Channels_First").data_format == "channels_first"
    assert make(None).data_format == "channels_last"


@pytest.mark.parametrize("make, match", [
    (lambda: B.MaxPooling1D(np.int64(2)), "pool_size must be a positive integer"),
    (lambda: B.DepthwiseConv1D(2.5), "kernel_size must be a positive integer"),
    (lambda: B.UpSampling3D(np.int64(2)), "size must be a positive integer"),
])
def test_window_sizes_of_other_types_get_the_sizes_error(make, match):
    """A numpy integer or a float as a window size failed with Python's "'numpy.int64'
    object is not iterable" (Keras refuses them too, naming the argument)."""
    with pytest.raises(ValueError, match=match):
        make()
