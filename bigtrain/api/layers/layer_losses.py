"""Losses a layer makes in its forward pass, as Keras's: `self.add_loss(x)` in a layer's
`call`, and a layer's `activity_regularizer` (its penalty on the layer's outputs, divided
by the batch size as Keras 3 divides it).

Keras keeps the losses on the layer that added them until the next outermost call (a
model's forward, or a layer called on its own) clears them and those of every layer
inside it; `layer.losses` and `model.losses` read them, with the penalties of the
regularized weights. bigtrain does the same: the outermost call is a graph's forward
(`GraphModule`) or a Layer called outside any other, and fit's and evaluate's task
(bigtrain.api.regularizers.LayerLossTask) adds their sum to the step's loss, with its
gradient.

Example:
    class Sparse(Layer):
        def call(self, x):
            self.add_loss(1e-3 * x.abs().mean())
            return x
"""
from __future__ import annotations

import functools
import threading

import torch
from torch import nn

from bigtrain.api.activations import ACTIVATIONS
from bigtrain.api.regularizers import ADDED, ADDED_LOSSES, added_losses, keep_added


class _CallState(threading.local):
    #: an outermost call is running: the calls inside it keep every loss added
    inside = False


#: per thread: an outermost call is running (GraphModule.forward's fast path sets it too)
CALLS = _CallState()


def run_call(module: nn.Module, call, args: tuple, kwargs: dict):
    """`call(*args, **kwargs)` for `module` (a Layer's call, a graph's forward): as the
    outermost call it first clears the losses `module` and its sublayers added before;
    then a Layer with an activity_regularizer adds the penalty of its outputs."""
    if CALLS.inside:
        out = call(*args, **kwargs)
    else:
        if ADDED.any:  # else there is nothing to clear: no walk over the modules
            for m in module.modules():
                m.__dict__.pop(ADDED_LOSSES, None)
        CALLS.inside = True
        try:
            out = call(*args, **kwargs)
        finally:
            CALLS.inside = False
    regularizer = module.__dict__.get("activity_regularizer")
    if regularizer is not None:
        _add_activity_penalty(module, regularizer, out)
    return out


def _add_activity_penalty(layer, regularizer, out) -> None:
    """Keras's activity regularization: for each output tensor, regularizer(output) divided
    by its batch size. An output layer whose activation compile moved into the loss
    returns logits in fit's steps: the penalty reads the activated output, as Keras's."""
    outs = out if isinstance(out, (list, tuple)) else [out]
    activation = ACTIVATIONS.get(getattr(layer, "activation_name", None)) \
        if getattr(layer, "defer_activation", False) else None
    for o in outs:
        if not isinstance(o, torch.Tensor):
            continue
        value = regularizer.differentiable(o if activation is None else activation(o))
        if o.dim() > 0:
            value = value / o.shape[0] if o.shape[0] else value * 0.0  # divide_no_nan
        add_loss(layer, value)


def add_loss(layer: nn.Module, loss) -> None:
    """Keras's `layer.add_loss(loss)`: keep `loss` (a tensor, or a list of them; a tensor
    of several values counts as their sum) until the next outermost call."""
    losses = list(loss) if isinstance(loss, (list, tuple)) else [loss]
    for x in losses:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{type(layer).__name__} {getattr(layer, 'name', '')!r}: "
                             "add_loss() takes tensors computed inside call() (e.g. "
                             f"self.add_loss(1e-3 * x.square().mean())), got {x!r}")
    keep_added(layer, losses)


def losses_of(module: nn.Module) -> list[torch.Tensor]:
    """Keras's `layer.losses` / `model.losses`: the losses `module` and its sublayers added
    in their latest call, then the penalty of each regularized trainable weight (with its
    gradient)."""
    out = list(added_losses(module))
    for layer in module.modules():
        if not hasattr(layer, "constrained_weights"):  # a bigtrain Layer's weight options
            continue
        for key, _, _, opts in layer.constrained_weights():
            weight = layer.get_parameter(key)
            if opts.regularizer is not None and weight.requires_grad:
                out.append(opts.regularizer.differentiable(weight))
    return out


def may_add_losses(net: nn.Module) -> bool:
    """Whether a layer of `net` may add losses in the forward: it has an
    activity_regularizer, or its class (one of the user's) names add_loss in a method."""
    for m in net.modules():  # one walk, a loop rather than any(generator): fit asks twice
        if m.__dict__.get("activity_regularizer") is not None or _names_add_loss(type(m)):
            return True
    return False


def has_activity_regularizer(net: nn.Module) -> bool:
    for m in net.modules():
        if m.__dict__.get("activity_regularizer") is not None:
            return True
    return False


@functools.cache
def _names_add_loss(cls: type) -> bool:
    for klass in cls.__mro__:
        if klass.__module__.startswith(("bigtrain.", "torch.")) or klass is object:
            continue
        for value in vars(klass).values():
            code = getattr(value, "__code__", None)
            if code is not None and _code_names(code, "add_loss"):
                return True
    return False


def _code_names(code, name: str) -> bool:
    """`name` is read as an attribute in `code` or a function nested in it."""
    return name in code.co_names or any(
        _code_names(c, name) for c in code.co_consts if hasattr(c, "co_names"))


class LayerLosses:
    """Mixed into Layer: Keras's `add_loss` and `losses`."""

    def add_loss(self, loss) -> None:
        """Keras's `add_loss`, called in `call`: the loss joins fit's and evaluate's loss of
        this step (see bigtrain.api.layers.layer_losses)."""
        add_loss(self, loss)

    @property
    def losses(self) -> list[torch.Tensor]:
        """The losses this layer and its sublayers added in their latest call, then the
        penalties of its regularized weights, as Keras's `layer.losses`."""
        return losses_of(self)

    def __getstate__(self):
        """Without the losses of the latest call: a copy (or a rank's model) starts clean,
        and copy.deepcopy refuses tensors inside an autograd graph."""
        state = super().__getstate__()
        state.pop(ADDED_LOSSES, None)
        return state
