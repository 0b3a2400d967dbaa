"""precision="16-mixed" scales the loss (torch.amp.GradScaler): gradients too small for
float16 still train the model, where unscaled they would underflow to zero; strategies that
cannot scale refuse float16 before anything starts."""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import Adam
from tests.api.conftest import teacher_data


def _tiny_loss(y_true, y_pred):
    """Cross-entropy x 1e-8: its float16 gradients are below float16's smallest number."""
    return 1e-8 * torch.nn.functional.cross_entropy(y_pred, y_true.argmax(1))


def _moved(precision, **fit):
    """Largest weight change after one epoch of the tiny loss."""
    x, y, _ = teacher_data(n=64)
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(20,))
    model = Model(inp, Dense(4)(Dense(32, activation="relu")(inp)))
    # epsilon far below the gradients: any gradient that survives moves the weights by ~lr
    model.compile(optimizer=Adam(learning_rate=1e-2, epsilon=1e-30), loss=_tiny_loss)
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, precision=precision, **fit)
    return max(float(np.abs(a - b).max()) for a, b in zip(before, model.get_weights()))


def test_loss_scaling_keeps_float16_gradients_from_underflowing(monkeypatch):
    assert _moved("32") > 1e-3  # the tiny loss trains in float32
    assert _moved("16-mixed") > 1e-3  # and in float16, scaled
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: real(device, enabled=False))
    assert _moved("16-mixed") == 0.0  # unscaled, every float16 gradient underflowed


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_data_parallel_and_sharded_ranks_scale_the_loss(strategy):
    assert _moved("16-mixed", strategy=strategy, devices=2) > 1e-3


@pytest.mark.parametrize("strategy", ["pipeline", "ps", "ddp_cpu_optimizer"])
def test_strategies_without_loss_scaling_refuse_float16(strategy):
    x, y, _ = teacher_data(n=64)
    inp = Input(shape=(20,))
    model = Model(inp, Dense(4, activation="softmax")(inp))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="16-mixed.*bf16-mixed"):
        model.fit(x, y, verbose=0, strategy=strategy, devices=2, precision="16-mixed")
