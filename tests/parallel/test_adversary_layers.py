"""Layers the support matrix does not hold, under the strategies that split them.

- A frozen BatchNormalization (trainable=False after compile: Keras normalizes with the
  moving statistics) under zero2/zero3: it read its norm's weights outside the norm's
  forward, where FSDP2 holds them as shards ("aten.native_batch_norm.default got mixed
  torch.Tensor and DTensor").
- A model frozen whole (model.trainable = False) on several processes is refused before
  any rank starts: one process trains nothing, ranks crashed inside torch (DDP "is not
  needed when a module doesn't have any parameter that requires a gradient", the
  parameter server's "element 0 of tensors does not require grad", KeyError: 0 in the
  optimizer gather under ddp_balanced and tensor).
- Conv1D -> GRU under a pipeline: Conv1D's output (channels-last, a transposed view) went
  to the next stage as it was, and the GRU's input gradient came back transposed into a
  buffer of those strides; gloo refuses both ("input tensor has to be contiguous").
"""
from unittest import mock

import numpy as np
import pytest

import bigtrain
from bigtrain.launch import launcher
from bigtrain.layers import GRU, BatchNormalization, Conv1D, Dense, Input
from bigtrain.models import Model, Sequential
from bigtrain.parallel import Pipeline

RNG = np.random.default_rng(0)
TOL = 1e-5


def _weights(model):
    return [np.asarray(w, dtype=np.float64) for w in model.get_weights()]


def _parity(build, x, y, **fit_kw) -> float:
    """Largest weight difference between one process and `fit_kw`'s strategy on 2 ranks."""
    out = []
    for kw in ({}, dict(fit_kw, devices=2, watchdog_timeout=30)):
        bigtrain.clear_session()
        bigtrain.set_seed(0)
        model = build()
        model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, **kw)
        out.append(_weights(model))
    return max(float(np.abs(a - b).max()) for a, b in zip(*out))


def _frozen_bn():
    inp = Input(shape=(10,))
    bn = BatchNormalization()
    model = Model(inp, Dense(3, activation="softmax")(bn(Dense(8, activation="relu")(inp))))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    bn.trainable = False
    return model


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_frozen_batch_normalization_trains_sharded_as_one_process(strategy):
    x = RNG.standard_normal((32, 10)).astype(np.float32)
    y = RNG.integers(0, 3, 32)
    assert _parity(_frozen_bn, x, y, strategy=strategy) < TOL


def _conv_gru():
    model = Sequential([Input(shape=(10, 3)), Conv1D(5, 3, activation="relu"), GRU(4),
                        Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def test_a_stage_whose_input_gradient_is_transposed_trains_as_one_process():
    x = RNG.standard_normal((32, 10, 3)).astype(np.float32)
    y = RNG.integers(0, 2, 32)
    assert _parity(_conv_gru, x, y, strategy=Pipeline(microbatches=2, schedule="1f1b")) < TOL


@pytest.mark.parametrize("strategy,devices", [("ddp", 2), ("zero1", 2), ("ddp_balanced", 2),
                                              ("tensor", 2), ("ps", 3)])
def test_a_model_frozen_whole_is_refused_before_any_rank(strategy, devices):
    model = _frozen_bn()
    model.trainable = False

    def no_launch(*args, **kwargs):
        raise AssertionError("a rank was started")
    x = RNG.standard_normal((16, 10)).astype(np.float32)
    with mock.patch.object(launcher, "launch", no_launch), \
            pytest.raises(ValueError, match="no trainable weights.*set trainable=True"):
        model.fit(x, RNG.integers(0, 3, 16), batch_size=8, verbose=0, strategy=strategy,
                  devices=devices)
