"""Keras layer arguments and call forms held to Keras 3 (torch backend): Lambda on a list
of tensors and with `arguments=`, the error a layer gives when a weight would be sized by
an axis of any size (None), and the recurrent layers' weight initializers, regularizers and
constraints."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model
from tests.api.harness import keras_parity


def _pair(make, shapes):
    """Keras's and bigtrain's predictions of `make(L, inputs)` with the same weights, and
    bigtrain's symbolic output shape."""
    import keras
    keras.utils.set_random_seed(0)
    kin = [keras.Input(shape=s) for s in shapes]
    kmodel = keras.Model(kin, make(keras.layers, kin))
    bin_ = [B.Input(shape=s) for s in shapes]
    out = make(B, bin_)
    model = Model(inputs=bin_, outputs=out)
    model.set_weights(kmodel.get_weights())
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(3, *s)).astype("float32") for s in shapes]
    return kmodel.predict(xs, verbose=0), model.predict(xs), out.shape


@pytest.mark.parametrize("make, shapes", [
    # a list input was refused ("takes one input, got 2"), as was arguments=
    (lambda L, i: L.Lambda(lambda ab: ab[0] * ab[1])(i), [(3,), (3,)]),
    (lambda L, i: L.Dense(2)(L.Lambda(lambda ab, k: (ab[0] - ab[1]) * k,
                                      arguments={"k": 0.5})(i)), [(3,), (3,)]),
    (lambda L, i: L.Dense(2)(L.Lambda(lambda x, k: x[:, :k], arguments={"k": 2})(i[0])),
     [(3,)]),
    (lambda L, i: L.Lambda(lambda ab: ab[0][:, :2] + ab[1],
                           output_shape=lambda shapes: shapes[1])(i), [(3,), (2,)]),
], ids=["list", "list-arguments", "arguments", "list-output-shape"])
def test_lambda_takes_lists_and_arguments_as_keras(make, shapes):
    want, got, shape = _pair(make, shapes)
    assert shape == want.shape[1:]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_lambda_on_a_list_runs_eagerly_and_refuses_a_mask():
    import torch
    a, b = torch.ones(2, 3), torch.full((2, 3), 2.0)
    out = B.Lambda(lambda ab, k: ab[0] + k * ab[1], arguments={"k": 3.0})([a, b])
    assert torch.equal(out, torch.full((2, 3), 7.0))
    with pytest.raises(ValueError, match="mask= is not supported"):
        B.Lambda(lambda x: x, mask=lambda x, m: m)


@pytest.mark.parametrize("make, shape", [
    (lambda: B.PReLU(), (None, 2)),
    (lambda: B.Conv1D(2, 2), (5, None)),
    (lambda: B.DepthwiseConv1D(2), (5, None)),
    (lambda: B.GroupNormalization(2), (3, None)),
    (lambda: B.LayerNormalization(), (3, None)),
    (lambda: B.BatchNormalization(), (3, None)),
    (lambda: B.RMSNormalization(), (3, None)),
    (lambda: B.LSTM(2), (3, None)),
    (lambda: B.Bidirectional(B.GRU(2)), (3, None)),
])
def test_a_weight_sized_by_an_axis_of_any_size_is_refused_in_the_users_terms(make, shape):
    """torch's own TypeError ("empty(): argument 'size' ... NoneType", "unsupported operand
    type(s) for %") was all the user saw."""
    with pytest.raises(ValueError, match=r"axis of any size \(None\).*Input\(shape=\.\.\.\)"):
        make()(B.Input(shape))


def test_an_axis_of_any_size_that_sizes_no_weight_still_builds():
    out = B.Conv2D(2, 2)(B.Input((4, None, 3)))
    assert out.shape == (3, None, 2)


def _constraints(L):
    import keras
    import bigtrain.api.constraints as C
    return keras.constraints if L is keras.layers else C


@pytest.mark.parametrize("build", [
    lambda L: L.LSTM(3, kernel_regularizer="l2", recurrent_regularizer="l1",
                     bias_regularizer="l2"),
    lambda L: L.GRU(3, kernel_constraint=_constraints(L).MaxNorm(0.3),
                    recurrent_constraint=_constraints(L).MaxNorm(0.2, axis=1),
                    bias_constraint="non_neg", return_sequences=True),
    lambda L: L.GRU(3, reset_after=False, bias_regularizer="l1",
                    kernel_constraint=_constraints(L).MaxNorm(0.3, axis=1)),
    lambda L: L.SimpleRNN(3, recurrent_constraint=_constraints(L).UnitNorm(axis=1)),
    lambda L: L.Bidirectional(L.LSTM(3, kernel_regularizer="l2")),
], ids=["lstm-regularizers", "gru-constraints", "gru-reset-before", "rnn-unit-norm",
        "bidirectional"])
def test_recurrent_weight_regularizers_and_constraints_match_keras(build):
    """kernel_/recurrent_/bias_ regularizers and constraints were refused on the recurrent
    layers; the constraints read Keras's layouts (gates in Keras's order)."""
    keras_parity(build, (4, 2))


@pytest.mark.parametrize("make", [
    lambda L, I: L.LSTM(3, kernel_initializer="ones", recurrent_initializer="zeros",
                        bias_initializer=I.Constant(0.5)),  # the forget gate's bias stays 1
    lambda L, I: L.LSTM(3, bias_initializer=I.Constant(0.5), unit_forget_bias=False),
    lambda L, I: L.GRU(3, kernel_initializer=I.Constant(0.3), bias_initializer=I.Constant(0.2),
                       recurrent_initializer="ones"),
    lambda L, I: L.GRU(3, reset_after=False, bias_initializer="ones"),
    lambda L, I: L.SimpleRNN(3, kernel_initializer="ones", recurrent_initializer=I.Identity(),
                             bias_initializer="ones"),
], ids=["lstm", "lstm-no-forget-bias", "gru", "gru-reset-before", "simple-rnn"])
def test_recurrent_initializers_fill_keras_layouts(make):
    import keras
    import bigtrain.api.initializers as I
    klayer = make(keras.layers, keras.initializers)
    klayer(keras.Input((4, 2)))
    layer = make(B, I)
    layer(B.Input((4, 2)))
    config = layer.get_config()
    for role in ("kernel", "recurrent", "bias"):
        if config[f"{role}_initializer"] in ("glorot_uniform", "orthogonal"):
            continue  # random draws: only the given deterministic ones compare
        index = ("kernel", "recurrent", "bias").index(role)
        np.testing.assert_allclose(layer.get_weights()[index],
                                   np.asarray(klayer.get_weights()[index]), atol=1e-6)
    assert type(layer)(**config).get_config() == config


IDS = np.array([[1, 2, 3, 4], [4, 5, 6, 2], [0, 3, 3, 1]], dtype="int32")


@pytest.mark.parametrize("make, x", [
    (lambda L: L.BatchNormalization(momentum=0.5), IDS),
    (lambda L: L.GlobalAveragePooling1D(), IDS.reshape(3, 2, 2)),
    (lambda L: L.LSTM(2), IDS.reshape(3, 2, 2)),
    (lambda L: L.GRU(2, return_sequences=True), IDS.reshape(3, 2, 2)),
    (lambda L: L.Bidirectional(L.SimpleRNN(2)), IDS.reshape(3, 2, 2)),
], ids=["batchnorm", "global-average", "lstm", "gru", "bidirectional"])
def test_integer_inputs_are_cast_as_keras(make, x):
    """Input(dtype="int32") into these layers failed in torch's kernels ("batch_norm not
    implemented for 'Int'", "expected m1 and m2 to have the same dtype"); Keras casts."""
    import keras
    kin = keras.Input(x.shape[1:], dtype="int32")
    kmodel = keras.Model(kin, make(keras.layers)(kin))
    inp = B.Input(x.shape[1:], dtype="int32")
    model = Model(inputs=inp, outputs=make(B)(inp))
    model.set_weights(kmodel.get_weights())
    np.testing.assert_allclose(model.predict(x), kmodel.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: B.LayerNormalization(),
    lambda: B.LayerNormalization(rms_scaling=True),
    lambda: B.GroupNormalization(2),
    lambda: B.RMSNormalization(),
])
def test_integer_inputs_normalize_as_their_float_values(make):
    """These failed on integer inputs; Keras 3's torch backend runs them in integer
    arithmetic (LayerNormalization gives [-1, 0, 0, 1] for [1, 2, 3, 4]), so they are held
    to the same layer on the float values instead."""
    layer = make()
    layer(B.Input((4,), dtype="int32"))
    import torch
    np.testing.assert_allclose(layer(torch.tensor(IDS)).detach().numpy(),
                               layer(torch.tensor(IDS, dtype=torch.float32)).detach().numpy())
