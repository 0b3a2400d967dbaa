"""Whether a built layer can take inputs of another shape: a layer shared by two inputs
of different lengths, as Keras allows (one Embedding, LSTM or Conv1D on sequences of 10
and 20 steps).

Keras finds out by tracing the layer's `call` on symbolic tensors; bigtrain does the same
with torch's fake tensors, which carry shapes but no data, so the check costs no compute
whatever the sizes.
"""
from __future__ import annotations

import logging

import torch

#: the size an axis of any size (None) takes in the trial run
_ANY_SIZE = 64


def _trial_shape(shape: tuple, built: tuple) -> tuple:
    """`shape` with its None axes given the built shape's size there (or _ANY_SIZE)."""
    sizes = []
    for i, s in enumerate(shape):
        other = built[i] if i < len(built) else None
        sizes.append(s if s is not None else other if other is not None else _ANY_SIZE)
    return tuple(sizes)


def reuse_refusal(layer, tensors: list, built, kwargs: dict) -> str | None:
    """Why `layer`, built for inputs of shape `built`, cannot take `tensors` (KerasTensors)
    with call options `kwargs`; None when it can.

    Runs the layer once on fake tensors of the new shapes, in inference mode and without
    gradients, so nothing (weights, BatchNormalization's moving statistics) changes.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode  # only for shared layers
    builts = built if layer.takes_list else [built]
    if len(builts) != len(tensors) or any(len(b) != len(t.shape) for b, t in
                                          zip(builts, tensors)):
        return "the inputs' ranks differ from those it was built for"
    modes = [(m, m.training) for m in layer.modules()]
    layer.train(False)
    log = logging.getLogger("torch._subclasses.fake_tensor")  # logs each failing op
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():  # shapes, no data
            xs = [torch.zeros((2, *_trial_shape(t.shape, b)), dtype=t.dtype)
                  for t, b in zip(tensors, builts)]
            layer.call(xs if layer.takes_list else xs[0], **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure means the layer cannot run there
        return f"its weights do not fit inputs of the new shape ({type(e).__name__}: {e})"
    finally:
        log.setLevel(level)
        for m, was in modes:
            m.training = was
    return None
