"""`self.add_loss(...)` in a layer's call and a layer's `activity_regularizer`, held against
Keras 3 (torch backend): the logged loss of every fit step (validation too), evaluate's
loss, the trained weights, and `model.losses` / `layer.losses` after a call match Keras;
on 2 ddp ranks (each adding its own share's loss) the fit matches one process."""
import copy

import keras
import numpy as np
import pytest
from keras import ops

import bigtrain.layers as B
from bigtrain import optimizers as bo
from bigtrain import regularizers as br
from bigtrain.models import Model

TOL = 1e-5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.normal(size=(32, 2)).astype("float32")
FIT = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)


def _penalized(L):
    """A layer that adds a penalty on its input (a batch mean) and, in training only, a
    second one: written once, built on keras.layers.Layer or bigtrain.layers.Layer."""
    class Penalized(L.Layer):
        def call(self, x, training=None):
            self.add_loss(0.3 * ops.mean(ops.square(x)))
            if training:
                self.add_loss([0.1 * ops.mean(ops.abs(x))])
            return x

        def compute_output_shape(self, input_shape):
            return input_shape
    return Penalized


def _pair(keras_hidden: dict, bigtrain_hidden: dict, out_act=None, penalized=True):
    keras.utils.set_random_seed(0)
    ki = keras.Input((4,))
    kh = keras.layers.Dense(5, activation="tanh", name="hidden", **keras_hidden)(ki)
    kh = _penalized(keras.layers)(name="pen")(kh) if penalized else kh
    km = keras.Model(ki, keras.layers.Dense(2, activation=out_act, name="out")(kh))
    bi = B.Input(shape=(4,))
    bh = B.Dense(5, activation="tanh", name="hidden", **bigtrain_hidden)(bi)
    bh = _penalized(B)(name="pen")(bh) if penalized else bh
    bm = Model(bi, B.Dense(2, activation=out_act, name="out")(bh))
    bm.set_weights(km.get_weights())
    km.compile(optimizer=keras.optimizers.SGD(0.2), loss="mse")
    bm.compile(optimizer=bo.SGD(0.2), loss="mse")
    return km, bm


def _diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _check_fit(km, bm, x=X, y=Y, loss_of_plain=None):
    hk = km.fit(x, y, validation_data=(x, y), **FIT).history
    hb = bm.fit(x, y, validation_data=(x, y), **FIT).history
    for key in ("loss", "val_loss"):
        assert np.allclose(hk[key], hb[key], atol=TOL), (key, hk[key], hb[key])
    assert _diff(km.get_weights(), bm.get_weights()) <= TOL
    assert abs(km.evaluate(x, y, verbose=0) - bm.evaluate(x, y)) <= TOL
    return hb


def test_add_loss_joins_fit_and_evaluate_as_in_keras():
    km, bm = _pair({}, {})
    hb = _check_fit(km, bm)
    _, plain = _pair({}, {}, penalized=False)
    h_plain = plain.fit(X, Y, validation_data=(X, Y), **FIT).history
    assert hb["loss"][0] > h_plain["loss"][0] + 1e-3  # the added losses are in the log


def test_train_and_test_on_batch_add_them_as_keras():
    km, bm = _pair({}, {})
    for _ in range(2):
        k, b = km.train_on_batch(X[:8], Y[:8]), bm.train_on_batch(X[:8], Y[:8])
        assert abs(float(np.ravel(k)[0]) - float(np.ravel(b)[0])) <= TOL
    assert abs(float(km.test_on_batch(X, Y)) - float(bm.test_on_batch(X, Y))) <= TOL


def test_model_and_layer_losses_read_the_latest_call():
    km, bm = _pair({"kernel_regularizer": keras.regularizers.l2(0.1)},
                   {"kernel_regularizer": br.l2(0.1)})
    for training in (False, True):
        km(X, training=training)
        bm(X, training=training)
        k = [float(v) for v in km.losses]
        b = [float(v) for v in bm.losses]
        assert np.allclose(sorted(k), sorted(b), atol=TOL), (training, k, b)
        assert len(b) == (3 if training else 2)  # add_loss(es), then the kernel penalty
    pen = bm.get_layer("pen")
    assert len(pen.losses) == 2 and all(t.requires_grad for t in pen.losses)
    bm(X[:4])  # the next outermost call clears them
    assert len(pen.losses) == 1
    assert copy.deepcopy(bm.net) is not None  # losses in an autograd graph are not copied
    layer = _penalized(B)()
    layer(np.ones((2, 3), "float32"), training=False)  # a layer called on its own
    assert [float(v) for v in layer.losses] == [pytest.approx(0.3)]


def test_a_shared_layer_keeps_the_losses_of_each_call():
    out = {}
    for L, model_cls in ((keras.layers, keras.Model), (B, Model)):
        a, b = L.Input((4,)), L.Input((4,))
        pen = _penalized(L)()
        model = model_cls([a, b], L.Add()([pen(a), pen(b)]))
        model([X, 2 * X])
        out[L] = sorted(float(v) for v in model.losses)
    assert len(out[B]) == 2 and np.allclose(out[keras.layers], out[B], atol=TOL)


@pytest.mark.parametrize("reg", [("l2", 0.05), ("l1", 0.02), ("l1_l2", (0.02, 0.03))])
def test_activity_regularizer_matches_keras(reg):
    name, value = reg
    kreg = keras.regularizers.L1L2(*value) if name == "l1_l2" else \
        getattr(keras.regularizers, name.upper())(value)
    breg = br.L1L2(*value) if name == "l1_l2" else getattr(br, name.upper())(value)
    km, bm = _pair({"activity_regularizer": kreg}, {"activity_regularizer": breg},
                   penalized=False)
    _check_fit(km, bm)


def test_activity_regularizer_survives_save_and_load(tmp_path):
    from bigtrain.models import load_model
    _, bm = _pair({}, {"activity_regularizer": br.L1L2(0.02, 0.03)}, penalized=False)
    bm.save(tmp_path / "m.bigtrain")
    again = load_model(tmp_path / "m.bigtrain")
    reg = again.get_layer("hidden").activity_regularizer
    assert (reg.l1, reg.l2) == (0.02, 0.03)
    assert abs(again.evaluate(X, Y) - bm.evaluate(X, Y)) <= TOL


def test_activity_regularizer_on_a_softmax_output_reads_probabilities():
    """compile moves the softmax into the crossentropy (the layer returns logits in fit's
    steps); the penalty still reads the softmax output, as Keras's."""
    keras.utils.set_random_seed(1)
    y = RNG.integers(0, 3, size=(32,))
    ki = keras.Input((4,))
    km = keras.Model(ki, keras.layers.Dense(3, activation="softmax",
                                            activity_regularizer=keras.regularizers.L2(0.5))(ki))
    bi = B.Input(shape=(4,))
    bm = Model(bi, B.Dense(3, activation="softmax", activity_regularizer=br.L2(0.5))(bi))
    bm.set_weights(km.get_weights())
    km.compile(optimizer=keras.optimizers.SGD(0.3), loss="sparse_categorical_crossentropy")
    bm.compile(optimizer=bo.SGD(0.3), loss="sparse_categorical_crossentropy")
    _check_fit(km, bm, y=y)


def test_add_loss_of_a_non_tensor_is_refused():
    class Bad(B.Layer):
        def call(self, x):
            self.add_loss(0.5)
            return x

    with pytest.raises(ValueError, match="add_loss.*tensors"):
        Bad(name="bad")(np.ones((2, 3), "float32"))


def test_strategies_that_miss_the_losses_are_refused_before_they_start():
    from bigtrain.api.training import make_task
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel.base import resolve_strategy
    _, bm = _pair({}, {})
    with pytest.raises(ValueError, match="add_loss.*pipeline"):
        bm.fit(X, Y, strategy="pipeline", devices=2, verbose=0)
    _, reg = _pair({"activity_regularizer": "l2"}, {"activity_regularizer": "l2"},
                   penalized=False)
    with pytest.raises(ValueError, match="activity_regularizer.*pipeline"):
        reg.fit(X, Y, strategy="ps", devices=2, verbose=0)
    # a split Dense's output is split too: each rank would penalize its part only
    with pytest.raises(ValueError, match="activity_regularizer.*tensor_parallel"):
        reg.fit(X, Y, strategy="tensor", devices=2, verbose=0)
    # strategy="auto" leaves them out
    refusal = make_task(bm, None, None, FitConfig(), []).strategy_refusal
    assert "add_loss" in refusal(resolve_strategy("pipeline"))
    assert refusal(resolve_strategy("tensor")) is None and refusal(resolve_strategy("ddp")) is None
    refusal = make_task(reg, None, None, FitConfig(), []).strategy_refusal
    assert "activity_regularizer" in refusal(resolve_strategy("tensor"))


def _ddp_fit(strategy, accumulate=1):
    _, bm = _pair({"activity_regularizer": br.L2(0.05)},
                  {"activity_regularizer": br.L2(0.05)})
    bm(X, training=True)  # losses in an autograd graph, left on the layers: not sent along
    kw = {} if strategy is None else {"strategy": strategy, "devices": 2, "timeout": 60}
    history = bm.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                     accumulate_steps=accumulate, **kw).history
    return bm.get_weights(), history["loss"]


def test_ddp_two_ranks_match_one_process():
    """Each rank (and micro-batch) adds the losses of its share of the batch, weighed as
    its share: for these batch means that is the whole batch's value."""
    ref_w, ref_loss = _ddp_fit(None)
    w, loss = _ddp_fit("ddp", accumulate=2)
    assert _diff(ref_w, w) <= TOL
    assert np.allclose(ref_loss, loss, atol=TOL), (ref_loss, loss)
