"""precision="bf16-mixed" on 2 ranks keeps the loss and metrics in float32, as one process
and Keras do: data parallel (autocast) and sharded (FSDP's bf16 parameters) strategies
alike, training and validation, and the weights stay float32."""
import os

import numpy as np
import pytest

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import SGD

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3", "fsdp_offload"])
def test_bf16_mixed_loss_reads_float32_targets_on_two_ranks(strategy):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (1000.0 + rng.uniform(0.0, 1.0, size=(32, 1))).astype("float32")  # bf16: 1000
    bigtrain.clear_session()
    inp = Input(shape=(4,))
    model = Model(inp, Dense(1)(inp))
    # every output is exactly 1000, in bf16 too
    model.set_weights([np.zeros((4, 1), "float32"), np.full((1,), 1000.0, "float32")])
    model.compile(optimizer=SGD(learning_rate=0.0), loss="huber", metrics=["mae"])
    hist = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, precision="bf16-mixed",
                     validation_data=(x, y), strategy=strategy, devices=2, verbose=0).history
    pred = np.full_like(y, 1000.0)
    want_loss = float(keras.losses.Huber()(y, pred).cpu().numpy())
    want_mae = float(np.abs(pred - y).mean())
    for prefix in ("", "val_"):
        assert hist[prefix + "loss"][0] == pytest.approx(want_loss, rel=1e-4)
        assert hist[prefix + "mae"][0] == pytest.approx(want_mae, rel=1e-4)
    kernel, bias = model.get_weights()
    assert kernel.dtype == bias.dtype == np.float32 and bias[0] == 1000.0
