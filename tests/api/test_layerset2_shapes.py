"""Axes of any size (Input(shape=(None, 8))) and layers shared by inputs of different
lengths, held to Keras 3's numbers: predict at two lengths and one SGD step, to 1e-5."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model
from bigtrain.optimizers import SGD


def _pair(build, specs):
    """The same graph in Keras and in bigtrain, bigtrain holding Keras's weights.
    `build(L, inputs)` returns the output; specs: [(shape, dtype)] per input."""
    import keras
    keras.utils.set_random_seed(0)
    kin = [keras.Input(shape=s, dtype=d) for s, d in specs]
    kmodel = keras.Model(kin, build(keras.layers, kin))
    bin_ = [B.Input(shape=s, dtype=d) for s, d in specs]
    model = Model(bin_, build(B, bin_))
    assert [w.shape for w in model.get_weights()] == [w.shape for w in kmodel.get_weights()]
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def _data(specs, steps, rng):
    out = []
    for shape, dtype in specs:
        sizes = tuple(steps if s is None else s for s in shape)
        out.append(rng.integers(1, 9, (4, *sizes)) if dtype == "int64"
                   else rng.normal(size=(4, *sizes)).astype(dtype))
    return out


def _agree(kmodel, model, xs, tol=1e-5):
    """predict agrees; then one full-batch SGD step leaves the same weights."""
    import keras
    want = kmodel.predict(xs, verbose=0)
    got = model.predict(xs)
    assert got.shape == want.shape and np.abs(got - want).max() <= tol
    y = np.random.default_rng(1).normal(size=want.shape).astype("float32")
    kmodel.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    kmodel.fit(xs, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    before = model.get_weights()
    model.compile(optimizer=SGD(learning_rate=0.1), loss="mse")
    model.fit(xs, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(), before)) > 1e-3
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        assert np.abs(a - b).max() <= tol


def _chain(*makers):
    def build(L, inputs):
        x = inputs[0]
        for make in makers:
            x = make(L)(x)
        return x
    return build


F = "float32"


@pytest.mark.parametrize("build,shape,dtype", [
    (_chain(lambda L: L.Dense(3)), (None, 5), F),
    (_chain(lambda L: L.LSTM(3)), (None, 5), F),
    (_chain(lambda L: L.GRU(3, return_sequences=True), lambda L: L.Dense(2)), (None, 5), F),
    (_chain(lambda L: L.Conv1D(4, 3, strides=2, padding="same"),
            lambda L: L.MaxPooling1D(3, strides=2, padding="same"),
            lambda L: L.GlobalAveragePooling1D()), (None, 3), F),
    (_chain(lambda L: L.Conv1D(4, 3, padding="causal", dilation_rate=2),
            lambda L: L.GlobalMaxPooling1D(), lambda L: L.Dense(2)), (None, 3), F),
    (_chain(lambda L: L.Embedding(10, 4), lambda L: L.SimpleRNN(3)), (None,), "int64"),
    (_chain(lambda L: L.ZeroPadding1D(2), lambda L: L.UpSampling1D(2),
            lambda L: L.Conv1DTranspose(2, 3, strides=2, padding="same"),
            lambda L: L.Cropping1D(1), lambda L: L.GlobalAveragePooling1D()), (None, 3), F),
    (_chain(lambda L: L.SeparableConv1D(3, 3, strides=2, padding="same"),
            lambda L: L.DepthwiseConv1D(2, strides=2, padding="same"),
            lambda L: L.GlobalMaxPooling1D()), (None, 3), F),
    (_chain(lambda L: L.Conv2D(3, 3, strides=2, padding="same"), lambda L: L.MaxPooling2D(),
            lambda L: L.GlobalAveragePooling2D(), lambda L: L.Dense(2)), (None, None, 2), F),
])
def test_axis_of_any_size_matches_keras_at_two_lengths(build, shape, dtype):
    specs = [(shape, dtype)]
    kmodel, model = _pair(build, specs)
    rng = np.random.default_rng(0)
    for steps in (9, 6):  # a second length through the same built model
        xs = _data(specs, steps, rng)
        want = kmodel.predict(xs[0], verbose=0)
        assert np.abs(model.predict(xs[0]) - want).max() <= 1e-5
    _agree(kmodel, model, xs[0])


def test_input_of_any_size_keeps_none_in_shapes_and_summary():
    inp = B.Input(shape=(None, 8))
    out = B.Dense(3)(B.LSTM(4, return_sequences=True)(inp))
    assert inp.shape == (None, 8) and out.shape == (None, 3)
    text = Model(inp, out).summary(print_fn=lambda *a, **k: None)
    assert "(None, None, 8)" in text and "(None, None, 3)" in text


def test_flatten_of_any_size_into_dense_names_the_fix():
    inp = B.Input(shape=(None, 8))
    flat = B.Flatten()(inp)
    assert flat.shape == (None,)
    with pytest.raises(ValueError, match=r"Dense 'head'.*any size \(None\).*GlobalAverage"):
        B.Dense(2, name="head")(flat)


@pytest.mark.parametrize("make", [
    lambda L: L.Dense(2),
    lambda L: L.LSTM(2, return_sequences=True),
    lambda L: L.Conv1D(2, 2, strides=2, padding="same"),
])
def test_layer_shared_by_inputs_of_two_lengths_matches_keras(make):
    specs = [((4, 3), F), ((7, 3), F)]

    def build(L, inputs):
        shared = make(L)
        return L.Concatenate(axis=1)([shared(inputs[0]), shared(inputs[1])])
    kmodel, model = _pair(build, specs)
    rng = np.random.default_rng(0)
    _agree(kmodel, model, [rng.normal(size=(4, 4, 3)).astype(F),
                           rng.normal(size=(4, 7, 3)).astype(F)])


def test_shared_embedding_and_lstm_on_two_lengths_matches_keras():
    specs = [((5,), "int64"), ((8,), "int64")]

    def build(L, inputs):
        emb, rnn = L.Embedding(10, 4), L.LSTM(3)
        return L.Add()([rnn(emb(inputs[0])), rnn(emb(inputs[1]))])
    kmodel, model = _pair(build, specs)
    rng = np.random.default_rng(0)
    _agree(kmodel, model, [rng.integers(0, 10, (4, 5)), rng.integers(0, 10, (4, 8))])


def test_shared_layer_refuses_inputs_its_weights_do_not_fit():
    a, b = B.Input(shape=(4, 3)), B.Input(shape=(4, 5))
    dense = B.Dense(2, name="d")
    dense(a)
    with pytest.raises(ValueError, match=r"layer 'd' \(Dense\), which was built for inputs of "
                                         r"shape \(None, 4, 3\): its weights do not fit"):
        dense(b)
