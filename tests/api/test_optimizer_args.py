"""Keras's optimizer arguments (clipnorm, global_clipnorm, clipvalue, weight_decay, use_ema)
on bigtrain's optimizers: the weights after training equal Keras 3's (torch backend) to
1e-5, and each setting is shown to change the result (so the check can fail)."""
import keras
import numpy as np
import pytest

from bigtrain import optimizers as bo
from tests.api.test_fit_args import X, Y, _diff, _pair

TOL = 1e-5
LOSS = "sparse_categorical_crossentropy"


def _train(keras_opt, bigtrain_opt, steps=1, batch_size=16):
    km, bm = _pair()
    km.compile(optimizer=keras_opt, loss=LOSS)
    bm.compile(optimizer=bigtrain_opt, loss=LOSS)
    epochs = steps * batch_size // len(X)
    km.fit(X, Y * 1, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    bm.fit(X, Y * 1, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return km, bm


def _unclipped(lr=2.0):
    return _train(keras.optimizers.SGD(lr), bo.SGD(lr))[1]


@pytest.mark.parametrize("arg,value", [("clipnorm", 0.05), ("global_clipnorm", 0.05),
                                       ("clipvalue", 0.01)])
def test_clipping_matches_keras(arg, value):
    km, bm = _train(keras.optimizers.SGD(2.0, **{arg: value}), bo.SGD(2.0, **{arg: value}))
    assert _diff(km, bm) <= TOL
    assert _diff(km, _unclipped()) > 100 * TOL  # clipping happened


def test_clipnorm_is_per_variable_not_global():
    km, _ = _train(keras.optimizers.SGD(2.0, clipnorm=0.05), bo.SGD(2.0, clipnorm=0.05))
    _, global_clip = _train(keras.optimizers.SGD(2.0), bo.SGD(2.0, global_clipnorm=0.05))
    assert _diff(km, global_clip) > 100 * TOL


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_weight_decay_matches_keras(momentum):
    # under momentum, coupled (L2) decay (torch's own weight_decay) would differ from Keras's
    kw = dict(learning_rate=0.1, momentum=momentum)
    km, bm = _train(keras.optimizers.SGD(weight_decay=0.5, **kw),
                    bo.SGD(weight_decay=0.5, **kw), steps=3, batch_size=8)
    assert _diff(km, bm) <= TOL
    _, plain = _train(keras.optimizers.SGD(**kw), bo.SGD(**kw), steps=3, batch_size=8)
    assert _diff(km, plain) > 100 * TOL


def test_adam_weight_decay_is_decoupled():
    """Keras's Adam(weight_decay=w) is AdamW: held against bigtrain's AdamW (both with
    Keras's epsilon; Keras's Adam itself is the oracle in test_keras_optim_bn.py)."""
    _, decayed = _train(keras.optimizers.SGD(), bo.Adam(0.1, weight_decay=0.5), 3, 8)
    _, adamw = _train(keras.optimizers.SGD(), bo.AdamW(0.1, weight_decay=0.5), 3, 8)
    _, plain = _train(keras.optimizers.SGD(), bo.Adam(0.1), 3, 8)
    assert max(float(np.abs(a - b).max()) for a, b in
               zip(decayed.get_weights(), adamw.get_weights())) <= TOL
    assert max(float(np.abs(a - b).max()) for a, b in
               zip(decayed.get_weights(), plain.get_weights())) > 100 * TOL


@pytest.mark.parametrize("overwrite", [None, 2])
def test_ema_matches_keras(overwrite):
    kw = dict(learning_rate=0.5, use_ema=True, ema_momentum=0.5,
              ema_overwrite_frequency=overwrite)
    km, bm = _train(keras.optimizers.SGD(**kw), bo.SGD(**kw), steps=5, batch_size=4)
    assert _diff(km, bm) <= TOL
    _, plain = _train(keras.optimizers.SGD(0.5), bo.SGD(0.5), steps=5, batch_size=4)
    assert _diff(km, plain) > 100 * TOL


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match="only one of clipnorm"):
        bo.Adam(clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(TypeError, match="clip_norm"):
        bo.Adam(clip_norm=1.0)
    with pytest.raises(ValueError, match="clipnorm must be a number"):
        bo.SGD(clipnorm=-1.0)


def test_strategies_that_cannot_clip_exactly_refuse_before_starting():
    _, bm = _pair()
    bm.compile(optimizer=bo.SGD(0.1, global_clipnorm=1.0), loss=LOSS)
    with pytest.raises(ValueError, match="global_clipnorm.*ddp"):
        bm.fit(X, Y, strategy="pipeline", devices=2, verbose=0)
    bm.compile(optimizer=bo.SGD(0.1, clipnorm=1.0), loss=LOSS)
    with pytest.raises(ValueError, match="parameter servers.*clipvalue"):
        bm.fit(X, Y, strategy="ps", devices=3, verbose=0)


def _fp16_weights(optimizer):
    _, bm = _pair()
    bm.compile(optimizer=optimizer, loss=LOSS)
    bm.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0, precision="16-mixed")
    return bm.get_weights()


def test_clipping_reads_unscaled_float16_gradients():
    """Under float16 the loss (and every gradient) is scaled by 2**16; clipping must see
    the true gradients: a norm bound above them changes nothing."""
    free = _fp16_weights(bo.SGD(0.5))
    loose = _fp16_weights(bo.SGD(0.5, global_clipnorm=50.0))  # true norm is about 1
    tight = _fp16_weights(bo.SGD(0.5, global_clipnorm=0.05))
    assert max(float(np.abs(a - b).max()) for a, b in zip(free, loose)) <= TOL
    assert max(float(np.abs(a - b).max()) for a, b in zip(free, tight)) > 100 * TOL


def test_verify_and_hybrid_refuse_what_fit_refuses():
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.task import FitConfig
    from bigtrain.launch.verify import UNSUPPORTED, check_strategy
    from bigtrain.parallel import Hybrid
    _, bm = _pair()
    bm.compile(optimizer=bo.SGD(0.1, global_clipnorm=1.0), loss=LOSS)
    with pytest.raises(ValueError, match="global_clipnorm"):
        bm.fit(X, Y, strategy=Hybrid(pp=2), devices=2, verbose=0)
    task = lambda: make_task(bm, prepare_data(bm, X, Y), None, FitConfig(verbose=0), [])  # noqa
    row = check_strategy("pipeline", task, bm, 2, TOL, reference=None)
    assert row.status == UNSUPPORTED and "global_clipnorm" in row.detail
