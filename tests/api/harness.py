"""The one layer-test harness every layer test calls (as Keras's run_layer_test)."""
from __future__ import annotations

import torch

from bigtrain.api.layers import Input
from bigtrain.models import Model


def run_layer_test(layer_factory, input_shape, expected_output_shape, *, input_dtype="float32",
                   expected_params=None, batch=3, trains=True):
    """Check one layer: symbolic shape, eager shape, parameter count, a backward pass,
    and that a save/load round trip of a model around it predicts the same.

    Args:
        layer_factory: zero-argument callable returning a fresh layer.
        input_shape: per-sample input shape (no batch axis).
        expected_output_shape: per-sample output shape.
        expected_params: parameter count to assert, if given.
        trains: assert that some parameter receives a gradient.
    """
    inp = Input(shape=input_shape, dtype=input_dtype)
    layer = layer_factory()
    out = layer(inp)
    assert out.shape == tuple(expected_output_shape), (out.shape, expected_output_shape)
    if expected_params is not None:
        assert sum(p.numel() for p in layer.parameters()) == expected_params
    model = Model(inputs=inp, outputs=out)
    if input_dtype.startswith("int"):
        x = torch.randint(0, 5, (batch, *input_shape))
    else:
        x = torch.randn(batch, *input_shape)
    y = model(x)
    assert tuple(y.shape) == (batch, *expected_output_shape)
    if trains and list(layer.parameters()):
        y.float().pow(2).mean().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    return model, x


def _chain(layers_or_one, inp):
    out = inp
    for layer in layers_or_one if isinstance(layers_or_one, (list, tuple)) else [layers_or_one]:
        out = layer(out)
    return out


def _keras_rows(kmodel) -> list[tuple[str, int]]:
    return [("(None, " + ", ".join(str(s) for s in layer.output.shape[1:]) + ")",
             layer.count_params()) for layer in kmodel.layers]  # InputLayer first, as bigtrain


def _bigtrain_rows(model) -> list[tuple[str, int]]:
    from bigtrain.api.summary import _rows
    return [(shape, n) for _, shape, n in _rows(model)]


def keras_parity(build, input_shape, *, input_dtype="float32", batch=4, lr=0.1, steps=True,
                 seed=0, tol=1e-5, x=None) -> float:
    """Hold a layer to Keras 3 (torch backend) in one call, and return the largest difference.

    `build(L)` makes the layer (or a list of layers, chained) from the namespace `L`, which is
    `keras.layers` once and `bigtrain.layers` once, so both sides read the same line. Checks:
    the summary's output shapes and parameter counts equal Keras's; after
    `set_weights(keras.get_weights())`, `predict` agrees to `tol`; and after one full-batch
    plain-SGD step on the same MSE loss the weights agree to `tol` (guarded: the step must move
    some weight by more than 100x `tol`, or the check could not tell a step apart).
    `steps=False` skips the SGD step (layers that are random in training).

    Example:
        keras_parity(lambda L: L.Conv2D(4, 3, padding="same"), (6, 6, 2))
    """
    import keras
    import numpy as np
    import bigtrain.layers as B
    from bigtrain.optimizers import SGD

    keras.utils.set_random_seed(seed)
    kin = keras.Input(shape=input_shape, dtype=input_dtype)
    kmodel = keras.Model(kin, _chain(build(keras.layers), kin))
    bin_ = B.Input(shape=input_shape, dtype=input_dtype)
    model = Model(inputs=bin_, outputs=_chain(build(B), bin_))
    assert _bigtrain_rows(model) == _keras_rows(kmodel), (_bigtrain_rows(model), _keras_rows(kmodel))
    assert [w.shape for w in model.get_weights()] == [w.shape for w in kmodel.get_weights()]
    model.set_weights(kmodel.get_weights())

    rng = np.random.default_rng(seed)
    if x is None:
        x = (rng.integers(0, 5, (batch, *input_shape)) if input_dtype.startswith("int")
             else rng.normal(size=(batch, *input_shape))).astype(input_dtype)
    want = kmodel.predict(x, verbose=0)
    got = model.predict(x)
    worst = float(np.abs(got - want).max())
    assert worst <= tol, f"predict differs from Keras by {worst}"
    if not steps or not model.get_weights():  # nothing to train
        return worst
    y = rng.normal(size=want.shape).astype("float32")
    kmodel.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
    kmodel.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    before = model.get_weights()
    model.compile(optimizer=SGD(learning_rate=lr), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(model.get_weights(), before))
    assert moved > 100 * tol, f"one SGD step moved the weights by only {moved}"
    for a, b in zip(model.get_weights(), kmodel.get_weights()):
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst <= tol, f"weights after one SGD step differ from Keras by {worst}"
    return worst
