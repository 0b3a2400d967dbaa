"""Merge layers held to Keras 3 (torch backend): Concatenate along any axis, Add with
broadcasting, Subtract, Multiply, Average, Maximum, Minimum and Dot."""
import numpy as np
import pytest

import bigtrain.layers as B
from bigtrain.models import Model, load_model


def graph_parity(build, shapes, *, steps=3, lr=0.1, batch=4, tol=1e-5, seed=0, train=True):
    """Build `build(L, inputs)` with keras.layers and bigtrain.layers, copy Keras's weights,
    and assert predict (and the weights after `steps` full-batch SGD steps on MSE) agree.

    Handles several inputs and several outputs; returns (keras model, bigtrain model, x).
    """
    import keras
    from bigtrain.optimizers import SGD

    keras.utils.set_random_seed(seed)
    kin = [keras.Input(shape=s) for s in shapes]
    kmodel = keras.Model(kin, build(keras.layers, kin))
    bin_ = [B.Input(shape=s) for s in shapes]
    model = Model(inputs=bin_, outputs=build(B, bin_))
    assert [w.shape for w in model.get_weights()] == [w.shape for w in kmodel.get_weights()]
    model.set_weights(kmodel.get_weights())
    rng = np.random.default_rng(seed)
    x = [rng.normal(size=(batch, *s)).astype("float32") for s in shapes]
    want, got = kmodel.predict(x, verbose=0), model.predict(x)
    want = want if isinstance(want, list) else [want]
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    assert [g.shape for g in got] == [w.shape for w in want]
    worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    assert worst <= tol, f"predict differs from Keras by {worst}"
    if train and kmodel.get_weights():
        y = [rng.normal(size=w.shape).astype("float32") for w in want]
        y = y if len(y) > 1 else y[0]
        kmodel.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
        kmodel.fit(x, y, batch_size=batch, epochs=steps, shuffle=False, verbose=0)
        before = model.get_weights()
        model.compile(optimizer=SGD(learning_rate=lr), loss="mse")
        model.fit(x, y, batch_size=batch, epochs=steps, shuffle=False, verbose=0)
        moved = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), before))
        assert moved > 100 * tol, f"training moved the weights by only {moved}"
        diff = max(float(np.abs(a - b).max())
                   for a, b in zip(model.get_weights(), kmodel.get_weights()))
        assert diff <= tol, f"weights after {steps} SGD steps differ from Keras by {diff}"
    return kmodel, model, x


def _dense_then(merge, widths=(3, 3)):
    """Dense layers (so training moves weights) feeding the merge layer, then a Dense."""
    def build(L, inputs):
        h = [L.Dense(w)(x) for w, x in zip(widths, inputs)]
        return L.Dense(2)(merge(L)(h))
    return build


@pytest.mark.parametrize("axis,shapes", [(0, [(3,), (3,)]), (-2, [(3,), (3,)]),
                                         (1, [(2, 3), (4, 3)]), (-1, [(2, 3), (2, 1)]),
                                         (0, [(2, 3), (2, 3)])])
def test_concatenate_on_any_axis_matches_keras(axis, shapes):
    def build(L, inputs):
        return L.Concatenate(axis=axis)(inputs)
    graph_parity(build, shapes, train=False)


def test_concatenate_along_the_batch_feeds_the_next_layer():
    def build(L, inputs):
        return L.Dense(2)(L.Concatenate(axis=0)(inputs))
    _, model, _ = graph_parity(build, [(3,), (3,)], train=False)
    assert model.predict([np.ones((4, 3), "float32")] * 2).shape == (8, 2)


@pytest.mark.parametrize("name", ["Add", "Subtract", "Multiply", "Average", "Maximum",
                                  "Minimum"])
def test_elementwise_merges_match_keras(name):
    graph_parity(_dense_then(lambda L: getattr(L, name)()), [(4,), (5,)])


@pytest.mark.parametrize("name", ["Add", "Multiply", "Average", "Maximum", "Minimum"])
def test_elementwise_merges_of_three_match_keras(name):
    graph_parity(_dense_then(lambda L: getattr(L, name)(), (3, 3, 3)), [(4,), (5,), (2,)])


@pytest.mark.parametrize("widths", [(3, 1), (1, 3)])
@pytest.mark.parametrize("name", ["Add", "Subtract", "Multiply", "Maximum"])
def test_elementwise_merges_broadcast_as_keras(name, widths):
    graph_parity(_dense_then(lambda L: getattr(L, name)(), widths), [(4,), (5,)])


def test_add_broadcasts_a_lower_rank_input_over_the_steps():
    def build(L, inputs):
        seq, vec = inputs  # (None, 3, 4) + (None, 4): the vector added at every step
        return L.Dense(2)(L.Add()([L.Dense(4)(seq), L.Dense(4)(vec)]))
    graph_parity(build, [(3, 2), (5,)])


@pytest.mark.parametrize("axes,normalize,shapes", [
    (1, False, [(4,), (4,)]),
    (-1, True, [(4,), (4,)]),
    (2, False, [(3, 4), (5, 4)]),          # (None, 3, 4) . (None, 5, 4) -> (None, 3, 5)
    ((1, 2), False, [(3, 4), (5, 3)]),
    ((2, 1), True, [(3, 4), (4,)]),
    ((1, 1), False, [(3, 2, 4), (3, 5)]),  # rank 4 against rank 3
])
def test_dot_matches_keras(axes, normalize, shapes):
    def build(L, inputs):
        h = [L.Dense(s[-1])(x) for s, x in zip(shapes, inputs)]
        return L.Dense(2)(L.Dot(axes=axes, normalize=normalize)(h))
    graph_parity(build, shapes)


def test_merge_layers_refuse_what_keras_refuses():
    a, b, c = B.Input(shape=(3,)), B.Input(shape=(4,)), B.Input(shape=(3,))
    with pytest.raises(ValueError, match=r"Add.*one shape.*broadcast.*\(None, 3\), \(None, 4\)"):
        B.Add()([a, b])
    with pytest.raises(ValueError, match=r"Subtract .* exactly 2 inputs, got 3"):
        B.Subtract()([a, c, c])
    with pytest.raises(ValueError, match=r"Dot .*axis 1 of the first input \(3\).*\(4\)"):
        B.Dot(axes=1)([a, b])
    with pytest.raises(ValueError, match=r"Dot .*batch axis"):
        B.Dot(axes=0)([a, c])
    with pytest.raises(ValueError, match=r"Concatenate .*axis=3 is out of range"):
        B.Concatenate(axis=3)([a, c])


def test_merge_layers_save_and_load(tmp_path):
    a, b = B.Input(shape=(3,)), B.Input(shape=(3,))
    ha, hb = B.Dense(3)(a), B.Dense(3)(b)
    outs = [B.Subtract()([ha, hb]), B.Multiply()([ha, hb]), B.Average()([ha, hb]),
            B.Maximum()([ha, hb]), B.Minimum()([ha, hb]), B.Dot(axes=1, normalize=True)([ha, hb]),
            B.Concatenate(axis=0)([ha, hb])]
    model = Model(inputs=[a, b], outputs=outs)
    path = str(tmp_path / "merge.bigtrain")
    model.save(path)
    again = load_model(path)
    x = [np.random.default_rng(1).normal(size=(4, 3)).astype("float32") for _ in range(2)]
    for got, want in zip(again.predict(x), model.predict(x)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
