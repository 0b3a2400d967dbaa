"""compile() again and model.summary() after training, as Keras 3 (on torch) does them:
the same optimizer object keeps its state across compiles, a new one or a name starts
afresh; the summary counts a built optimizer's variables and names BatchNormalization's
weights as Keras."""
import io
import os

import numpy as np
import pytest

import bigtrain
import bigtrain.callbacks
import bigtrain.layers as BL
import bigtrain.optimizers as BO
from bigtrain.models import Model

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

RNG = np.random.default_rng(0)
X = RNG.standard_normal((40, 4)).astype("float32")
Y = (X @ np.array([[3.0], [-2.0], [0.5], [1.0]])).astype("float32")
FIT = dict(batch_size=16, epochs=2, shuffle=False, verbose=0)


def twin_models(batch_norm=False):
    """(keras model, bigtrain model) with the same weights, not compiled."""
    keras.utils.set_random_seed(1)
    kin = keras.Input((4,))
    kh = keras.layers.Dense(3, activation="relu")(kin)
    kh = keras.layers.BatchNormalization()(kh) if batch_norm else kh
    kmodel = keras.Model(kin, keras.layers.Dense(1)(kh))
    bigtrain.clear_session()
    bin_ = BL.Input((4,))
    h = BL.Dense(3, activation="relu")(bin_)
    h = BL.BatchNormalization()(h) if batch_norm else h
    model = Model(bin_, BL.Dense(1)(h))
    model.set_weights(kmodel.get_weights())
    return kmodel, model


def _fit_compile_fit(model, first, second, loss2="mae"):
    model.compile(optimizer=first, loss="mse")
    model.fit(X, Y, **FIT)
    model.compile(optimizer=second(model, first), loss=loss2)
    model.fit(X, Y, **FIT)
    return model.get_weights(), int(model.optimizer.iterations)


@pytest.mark.parametrize("again", ["same object", "model.optimizer"])
def test_compiling_again_with_the_same_optimizer_keeps_its_state(again):
    """Keras's optimizer holds its moments and `iterations`: compiling again with it (a new
    loss here) continues them, where a fresh Adam would restart its bias correction."""
    reuse = (lambda model, first: first) if again == "same object" else \
        (lambda model, first: model.optimizer)
    kmodel, model = twin_models()
    ours, our_steps = _fit_compile_fit(model, BO.Adam(0.05), reuse)
    theirs, their_steps = _fit_compile_fit(kmodel, keras.optimizers.Adam(0.05), reuse)
    assert our_steps == their_steps == 12
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_compiling_again_with_a_name_or_a_new_optimizer_starts_afresh():
    kmodel, model = twin_models()
    ours, our_steps = _fit_compile_fit(model, "adam", lambda model, first: "adam")
    theirs, their_steps = _fit_compile_fit(kmodel, "adam", lambda model, first: "adam")
    assert our_steps == their_steps == 6
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    kmodel, model = twin_models()
    ours, _ = _fit_compile_fit(model, BO.Adam(0.05), lambda model, first: BO.Adam(0.05))
    theirs, _ = _fit_compile_fit(kmodel, keras.optimizers.Adam(0.05),
                                 lambda model, first: keras.optimizers.Adam(0.05))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _totals(model) -> list[str]:
    text = io.StringIO()
    model.summary(print_fn=lambda s, *args, **kwargs: text.write(s + "\n"))
    return [line.strip() for line in text.getvalue().splitlines() if " params: " in line]


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop", "nadam"])
def test_summary_counts_the_optimizer_variables_once_built_as_keras(name):
    """Before a fit: the weights' totals; after: Keras adds "Optimizer params" (slots,
    iterations, learning_rate) into the total, bytes written as "124.00 B"."""
    kmodel, model = twin_models(batch_norm=True)
    kmodel.compile(optimizer=name, loss="mse")
    model.compile(optimizer=name, loss="mse")
    assert _totals(model) == _totals(kmodel)
    kmodel.fit(X, Y, **FIT)
    model.fit(X, Y, **FIT)
    assert _totals(model) == _totals(kmodel)
    assert any(line.startswith("Optimizer params") for line in _totals(model))


def test_batch_normalization_weights_have_keras_names():
    kmodel, model = twin_models(batch_norm=True)
    assert [w.name for w in model.weights] == [w.name for w in kmodel.weights]
    # "<layer>/<weight>": the layer names follow each library's counters
    assert [w.path.split("/")[-1] for w in model.weights] == \
        [w.path.split("/")[-1] for w in kmodel.weights]
    assert [w.name for w in model.non_trainable_weights] == ["moving_mean", "moving_variance"]


def test_a_rate_set_on_the_optimizer_between_compiles_holds_with_its_state():
    """Keras: `opt.learning_rate = r` then compile(opt) again trains on at rate r with the
    moments kept; a rate ReduceLROnPlateau lowered during the fit stays when it is not."""
    kmodel, model = twin_models()
    keras_opt, ours_opt = keras.optimizers.Adam(0.05), BO.Adam(0.05)
    rates = []
    for m, opt, cbs in [(model, ours_opt, bigtrain.callbacks),
                        (kmodel, keras_opt, keras.callbacks)]:
        m.compile(optimizer=opt, loss="mse")
        m.fit(X, Y, callbacks=[cbs.ReduceLROnPlateau(
            "loss", patience=0, min_delta=100, factor=0.5)], **FIT)
        m.compile(optimizer=opt, loss="mse")
        rates.append(float(m.optimizer.learning_rate))
        m.fit(X, Y, **FIT)
        opt.learning_rate = 0.2
        m.compile(optimizer=opt, loss="mse")
        m.fit(X, Y, **FIT)
        rates.append(float(m.optimizer.learning_rate))
    assert rates == pytest.approx([0.025, 0.2, 0.025, 0.2])
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
