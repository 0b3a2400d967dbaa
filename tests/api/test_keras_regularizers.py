"""Keras's kernel/bias/embeddings regularizers and constraints, held against Keras 3 (torch
backend): the trained weights and the logged loss (History, validation included) match to
1e-5, and under ddp, zero1, zero2, zero3 and tensor on 2 ranks they match one process (the
penalty counted once per step, not per rank or micro-batch; norms over whole weights)."""
import keras
import numpy as np
import pytest

from bigtrain import constraints as bc
from bigtrain import optimizers as bo
from bigtrain import regularizers as br
from bigtrain.layers import Dense, Embedding, Flatten, Input
from bigtrain.models import Model

TOL = 1e-5
RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype("float32")
Y = RNG.integers(0, 3, size=(32,))
LOSS = "sparse_categorical_crossentropy"
FIT = dict(batch_size=8, epochs=2, shuffle=False, verbose=0)


def _pair(keras_args: dict, bigtrain_args: dict, out_args=None):
    """The same net in Keras and bigtrain (bigtrain holding Keras's weights); the hidden
    layer takes `*_args`, the output layer `out_args` (Keras objects, bigtrain objects)."""
    k_out, b_out = out_args or ({}, {})
    keras.utils.set_random_seed(0)
    ki = keras.Input((4,))
    kh = keras.layers.Dense(6, activation="relu", name="hidden", **keras_args)(ki)
    km = keras.Model(ki, keras.layers.Dense(3, activation="softmax", name="cls", **k_out)(kh))
    bi = Input(shape=(4,))
    bh = Dense(6, activation="relu", name="hidden", **bigtrain_args)(bi)
    bm = Model(inputs=bi, outputs=Dense(3, activation="softmax", name="cls", **b_out)(bh))
    bm.set_weights(km.get_weights())
    km.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.5), loss=LOSS)
    bm.compile(optimizer=bo.SGD(0.5, momentum=0.5), loss=LOSS)
    return km, bm


def _diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def _fit_both(keras_args, bigtrain_args, out_args=None):
    km, bm = _pair(keras_args, bigtrain_args, out_args)
    hk = km.fit(X, Y, validation_data=(X, Y), **FIT).history
    hb = bm.fit(X, Y, validation_data=(X, Y), **FIT).history
    return km, bm, hk, hb


def _plain_weights():
    km, _ = _pair({}, {})
    km.fit(X, Y, **FIT)
    return km.get_weights()


REGULARIZED = [
    ({"kernel_regularizer": keras.regularizers.l2(0.1)}, {"kernel_regularizer": br.l2(0.1)}),
    ({"kernel_regularizer": keras.regularizers.L1(0.05),
      "bias_regularizer": keras.regularizers.L1L2(0.02, 0.3)},
     {"kernel_regularizer": br.L1(0.05), "bias_regularizer": br.L1L2(0.02, 0.3)}),
    ({"kernel_regularizer": "l2", "bias_regularizer": "l1"},
     {"kernel_regularizer": "l2", "bias_regularizer": "l1"}),
]


@pytest.mark.parametrize("keras_args,bigtrain_args", REGULARIZED)
def test_regularizers_match_keras_weights_and_loss(keras_args, bigtrain_args):
    km, bm, hk, hb = _fit_both(keras_args, bigtrain_args)
    assert _diff(km.get_weights(), bm.get_weights()) <= TOL
    for key in ("loss", "val_loss"):  # the penalty is in both, as in Keras
        assert np.allclose(hk[key], hb[key], atol=TOL), (key, hk[key], hb[key])
    assert _diff(km.get_weights(), _plain_weights()) > 100 * TOL  # the penalty acted


CONSTRAINED = [
    ({"kernel_constraint": keras.constraints.MaxNorm(0.5)}, {"kernel_constraint": bc.MaxNorm(0.5)}),
    ({"kernel_constraint": keras.constraints.UnitNorm(axis=1),
      "bias_constraint": keras.constraints.NonNeg()},
     {"kernel_constraint": bc.UnitNorm(axis=1), "bias_constraint": bc.NonNeg()}),
    ({"kernel_constraint": keras.constraints.MinMaxNorm(0.6, 0.8, rate=0.5)},
     {"kernel_constraint": bc.MinMaxNorm(0.6, 0.8, rate=0.5)}),
]


@pytest.mark.parametrize("keras_args,bigtrain_args", CONSTRAINED)
def test_constraints_match_keras(keras_args, bigtrain_args):
    km, bm, hk, hb = _fit_both(keras_args, bigtrain_args)
    assert _diff(km.get_weights(), bm.get_weights()) <= TOL
    assert np.allclose(hk["loss"], hb["loss"], atol=TOL)
    assert _diff(km.get_weights(), _plain_weights()) > 100 * TOL


def test_embeddings_regularizer_and_constraint_match_keras():
    ids = RNG.integers(0, 10, size=(32, 3))
    keras.utils.set_random_seed(0)
    ki = keras.Input((3,), dtype="int32")
    ke = keras.layers.Embedding(10, 4, embeddings_regularizer=keras.regularizers.l2(0.05),
                                embeddings_constraint=keras.constraints.MaxNorm(0.1, axis=1))(ki)
    km = keras.Model(ki, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(ke)))
    bi = Input(shape=(3,), dtype="int64")
    be = Embedding(10, 4, embeddings_regularizer=br.l2(0.05),
                   embeddings_constraint=bc.MaxNorm(0.1, axis=1))(bi)
    bm = Model(inputs=bi, outputs=Dense(3, activation="softmax")(Flatten()(be)))
    bm.set_weights(km.get_weights())
    km.compile(optimizer=keras.optimizers.SGD(0.5), loss=LOSS)
    bm.compile(optimizer=bo.SGD(0.5), loss=LOSS)
    hk, hb = km.fit(ids, Y, **FIT).history, bm.fit(ids, Y, **FIT).history
    assert _diff(km.get_weights(), bm.get_weights()) <= TOL
    assert np.allclose(hk["loss"], hb["loss"], atol=TOL)


def test_regularizer_and_constraint_survive_save_and_load(tmp_path):
    from bigtrain.models import load_model
    _, bm = _pair({}, {"kernel_regularizer": br.L1L2(0.01, 0.2),
                       "kernel_constraint": bc.MaxNorm(0.5)})
    bm.save(tmp_path / "m.bigtrain")
    again = load_model(tmp_path / "m.bigtrain")
    hidden = next(layer for layer in again.layers if layer.name == "hidden")
    opts = hidden.weight_options["kernel"]
    assert (opts.regularizer.l1, opts.regularizer.l2, opts.constraint.max_value) == \
        (0.01, 0.2, 0.5)
    # the loss holds the penalty: the same in the loaded model
    assert abs(again.evaluate(X, Y) - bm.evaluate(X, Y)) <= TOL


def test_refused_arguments_say_why():
    with pytest.raises(ValueError, match="unknown regularizer"):
        Dense(3, kernel_regularizer="l3")
    with pytest.raises(ValueError, match="sparse=True"):
        Embedding(10, 4, sparse=True, embeddings_regularizer="l2")
    _, bm = _pair({}, {"kernel_regularizer": br.l2(0.1)})
    with pytest.raises(ValueError, match="regularizers and constraints.*pipeline"):
        bm.fit(X, Y, strategy="pipeline", devices=2, verbose=0)


# ---- strategies: 2 ranks against one process -----------------------------------------

def _strategy_fit(strategy, accumulate=1):
    args = {"kernel_regularizer": br.L1L2(0.02, 0.1), "bias_regularizer": br.l2(0.3),
            "kernel_constraint": bc.MaxNorm(0.4)}
    out = ({}, {"kernel_regularizer": br.l2(0.2), "kernel_constraint": bc.UnitNorm(axis=0)})
    _, bm = _pair({}, args, out)
    kw = {} if strategy is None else {"strategy": strategy, "devices": 2, "timeout": 60}
    history = bm.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                     accumulate_steps=accumulate, **kw).history
    return bm.get_weights(), history["loss"]


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "zero3", "tensor"])
def test_strategies_match_one_process(strategy):
    ref_w, ref_loss = _strategy_fit(None)
    w, loss = _strategy_fit(strategy, accumulate=2)
    assert _diff(ref_w, w) <= TOL
    assert np.allclose(ref_loss, loss, atol=TOL), (ref_loss, loss)


def test_auto_leaves_out_the_strategies_a_regularized_model_cannot_use(monkeypatch):
    """strategy="auto" hands the planner the strategies the penalties refuse (pipelines,
    parameter servers), so it cannot pick one of them."""
    import bigtrain.plan
    from bigtrain.launch import runner
    seen = {}

    def fake_plan(*args, refused=None, **kwargs):
        seen.update(refused or {})
        raise KeyboardInterrupt  # stop before planning
    monkeypatch.setattr(bigtrain.plan, "plan", fake_plan)
    i = Input(shape=(4,))
    m = Model(i, Dense(2, kernel_regularizer=br.L2(0.1))(i))
    m.compile(optimizer="sgd", loss="mse")
    x = np.zeros((8, 4), "float32")
    with pytest.raises(KeyboardInterrupt):
        m.fit(x, x[:, :2], batch_size=4, verbose=0, strategy="auto", devices=2)
    assert "regularizers" in seen.get("pipeline", "") and "ddp_cpu_optimizer" in seen
    assert "ddp" not in seen and "zero3" not in seen
    assert runner.task_refusals(None) == {}
