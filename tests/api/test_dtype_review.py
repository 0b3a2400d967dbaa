"""Mixed precision against Keras: under precision="bf16-mixed" the model's outputs are bf16,
but Keras computes every loss and metric in float32 (their dtype, floatx), so float32
targets are never rounded to bf16's 8 significant bits."""
import os

import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import SGD

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")


def _constant_model(value: float, units: int):
    """Dense(units) whose output is `value` for every input (exact in bf16: 1000 is)."""
    bigtrain.clear_session()
    inp = Input(shape=(4,))
    model = Model(inp, Dense(units)(inp))
    model.set_weights([np.zeros((4, units), "float32"), np.full((units,), value, "float32")])
    return model


@pytest.mark.parametrize("loss, metric", [("huber", "mse"), ("cosine_similarity", "mae")])
def test_bf16_loss_and_metrics_read_float32_targets(loss, metric):
    # targets 1000 + u: bf16 rounds each to 1000 or 1004 (its spacing there is 4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    u = rng.uniform(0.0, 1.0, size=(64, 1)).astype("float32")
    y = (1000.0 + u).astype("float32")
    if loss == "cosine_similarity":  # two columns, so the direction depends on u
        y = np.concatenate([y, 1000.0 - 3 * u], 1)
    model = _constant_model(1000.0, y.shape[1])
    model.compile(optimizer=SGD(learning_rate=0.0), loss=loss, metrics=[metric])
    hist = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, precision="bf16-mixed",
                     validation_data=(x, y), verbose=0).history
    pred = np.full_like(y, 1000.0)  # the bf16 output, exactly
    want_loss = float(keras.losses.get(loss)(y, pred).cpu().numpy().mean())
    want_metric = float(np.mean((pred - y) ** 2 if metric == "mse" else np.abs(pred - y)))
    for prefix in ("", "val_"):
        assert hist[prefix + "loss"][0] == pytest.approx(want_loss, rel=1e-4, abs=1e-7)
        assert hist[prefix + metric][0] == pytest.approx(want_metric, rel=1e-4)


def test_loss_of_a_bf16_output_is_float32_as_keras():
    from bigtrain.api.losses import get_loss
    rng = np.random.default_rng(1)
    y = rng.normal(size=(8, 3)).astype("float32") * 300
    pred = torch.tensor(rng.normal(size=(8, 3)) * 300).bfloat16().requires_grad_()
    ours = get_loss("huber")(torch.tensor(y), pred)
    want = keras.losses.Huber()(y, pred.detach())  # Keras casts y_pred to float32
    assert ours.dtype == torch.float32
    assert float(ours) == pytest.approx(float(want), rel=1e-6)
    ours.backward()
    assert pred.grad.dtype == torch.bfloat16  # the gradient flows back into the output
