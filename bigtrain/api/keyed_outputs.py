"""A torch module whose forward returns a dict of tensors (as Hugging Face models do),
trained with `compile(loss={key: ...})` as Keras trains a model with named outputs.

compile takes the keys that have a loss, sorted (the order in which Keras flattens a dict
of outputs), as the model's output names, and hooks the module's forward: inside fit's and
evaluate's steps it returns those tensors as a tuple in that order, which the multi-output
path reads by position (a loss, a loss weight and metrics per output; History's
"<key>_loss" and "<key>_<metric>"). Everywhere else (`model(x)`, predict) the module
returns its own dict. A key without a loss is not trained on, as in Keras (whose fit also
wants targets for it; bigtrain does not).

Under DDP (ddp, zero1) a key without a loss can leave parameters without gradients, which
DDP refuses unless told: fit turns on its `find_unused_parameters` where a forward of the
first row shows such parameters (`ddp_strategy`).

Example:
    model = Model(module)                    # module(x) -> {"a": (B, 2), "b": (B, 3)}
    model.compile(optimizer="sgd", loss={"a": "mse", "b": "sparse_categorical_crossentropy"},
                  loss_weights={"a": 1.0, "b": 0.5}, metrics={"b": ["accuracy"]})
    history = model.fit(x, {"a": ya, "b": yb})  # loss, a_loss, b_loss, b_accuracy
    model.predict(x)                            # {"a": array, "b": array}
"""
from __future__ import annotations

from collections.abc import Mapping

import torch


class KeyedOutputs:
    """The forward hook that turns the module's dict into the tuple of `keys`.

    Args:
        keys: the dict's keys that have a loss, in output order.

    `engine_view` is True only inside fit's and evaluate's steps (set and restored by
    `bigtrain.api.training.output_activations`, as it sets the output layers' deferred
    activations); elsewhere the hook leaves the dict as it is.
    """

    def __init__(self, keys: list[str]):
        self.keys = list(keys)
        self.engine_view = False
        self.handle = None  # torch's RemovableHandle, kept to unhook at the next compile

    def __call__(self, module, args, output):
        if not self.engine_view:
            return None  # the module's own output
        if not isinstance(output, Mapping):
            raise TypeError(f"compile's loss is a dict by output key {self.keys}, but the "
                            f"model's forward returned {type(output).__name__}, not a dict; "
                            "return a dict of tensors from forward, or compile with one loss "
                            "(or a list of losses, one per tensor of a tuple)")
        missing = [k for k in self.keys if k not in output]
        if missing:
            raise ValueError(f"compile's loss names {missing}, which the model's forward does "
                             f"not return: its dict has keys {list(output)}; give losses only "
                             "for those keys")
        not_tensors = {k: type(output[k]).__name__ for k in self.keys
                       if not isinstance(output[k], torch.Tensor)}
        if not_tensors:
            raise TypeError(f"compile's loss names {list(not_tensors)}, but the model's forward "
                            f"returned no tensor for them ({not_tensors}); a loss needs a "
                            "tensor: give losses only for keys whose value is a tensor")
        if len(self.keys) == 1:  # one output: the engine reads a tensor, not a 1-tuple
            return output[self.keys[0]]
        return tuple(output[k] for k in self.keys)

    def __getstate__(self):  # launched ranks get the hook without the caller's handle
        return {"keys": self.keys, "engine_view": self.engine_view, "handle": None}


def hook_dict_outputs(model, loss) -> KeyedOutputs | None:
    """For a torch module compiled with a loss dict, hook its forward (see the module
    docstring) and return the hook; None for a functional model or a loss that is no
    dict. An earlier compile's hook is removed first.

    Args:
        model: a `bigtrain.models.Model`, `model.net` the module.
        loss: compile's `loss`; a dict maps output keys to losses (a None loss: the key is
            not trained on, as in Keras).
    """
    from bigtrain.api.functional import GraphModule
    earlier = model.compiled.keyed if model.compiled is not None else None
    if earlier is not None:
        earlier.handle.remove()
        model.compiled.keyed = None  # that compile's output names are gone with its hook
    if isinstance(model.net, GraphModule) or not isinstance(loss, Mapping):
        return None
    keys = sorted(k for k, v in loss.items() if v is not None)
    if not keys:
        raise ValueError(f"compile's loss dict {dict(loss)} gives no output a loss; name at "
                         "least one key of the model's output dict with a loss")
    hook = KeyedOutputs(keys)
    hook.handle = model.net.register_forward_hook(hook)
    return hook


def output_names(model) -> list[str] | None:
    """The output keys a loss dict gave at compile (see `hook_dict_outputs`), or None."""
    hook = model.compiled.keyed if model.compiled is not None else None
    return None if hook is None else hook.keys


def refuse_strategy(model, strategy) -> None:
    """Refuse, before any process starts, a pipeline for a model trained on dict outputs:
    the pipeline cuts the module into stages and computes the loss on the last one's
    output, not on the module's dict."""
    from bigtrain.parallel.base import resolve_strategy
    from bigtrain.parallel.pipeline import Pipeline
    if output_names(model) is None or strategy in (None, "auto"):
        return
    strat = resolve_strategy(strategy)
    if isinstance(strat, Pipeline):
        raise ValueError(f"strategy {strat.name!r} cannot train a module whose forward returns "
                         "a dict (compile's loss is a dict by output key): a pipeline cuts the "
                         "module into stages and does not see its dict; use strategy='ddp', "
                         "'zero2', 'zero3' or 'fsdp'")


def ddp_strategy(model, strategy, data, processes: int):
    """The strategy to fit a dict-output module with: a DDP one (ddp, zero1, ...) that
    finds unused parameters where some trainable parameter reaches no output that has a
    loss (a layer feeding only a key without one, as Keras leaves such an output
    untrained); else `strategy` as given. Without it DDP stops the first step: it waits
    for gradients those parameters never get. A copy is changed, never the user's object.

    Args:
        model: the compiled Model; `strategy`: fit's (a name, an object or None);
        data: fit's training data, whose first row the check runs on;
        processes: how many ranks the fit runs on (one: no DDP, nothing to do).
    """
    import copy
    from bigtrain.launch.runner import launched_world_size
    from bigtrain.parallel.base import resolve_strategy
    from bigtrain.parallel.data_parallel import DataParallel
    if output_names(model) is None or processes < 2 or strategy == "auto":
        return strategy
    # a launched job of several ranks trains with ddp when fit names no strategy
    name = "ddp" if strategy is None and (launched_world_size() or 1) > 1 else strategy
    strat = resolve_strategy(name)
    if not isinstance(strat, DataParallel) or strat.find_unused_parameters:
        return strategy
    if not _unused_parameters(model, data):
        return strategy
    strat = copy.copy(strat)
    strat.find_unused_parameters = True
    return strat


def _unused_parameters(model, data) -> bool:
    """Whether some trainable parameter of `model.net` reaches no output that has a loss,
    read from the autograd graph of a forward of the data's first row in inference mode
    (no running statistic moves, no dropout draws). True where no row can be read (a
    stream): DDP then looks for unused parameters itself, at each step."""
    from bigtrain.engine.data import ArrayData
    from bigtrain.parallel.microbatch import call_module
    net, hook = model.net, model.compiled.keyed
    params = {id(p) for p in net.parameters() if p.requires_grad}
    if not params:
        return False
    if not isinstance(data, ArrayData) or len(data) == 0:
        return True
    x, _, _ = data.take(torch.arange(1), next(net.parameters()).device)
    was_training, was_view = net.training, hook.engine_view
    net.eval()
    hook.engine_view = True  # the tuple of the keys that have a loss
    try:
        with torch.enable_grad():
            out = call_module(net, x)
    finally:
        net.train(was_training)
        hook.engine_view = was_view
    return bool(params - _leaves(out if isinstance(out, tuple) else (out,)))


def _leaves(outputs: tuple) -> set[int]:
    """ids of the tensors requiring grad that `outputs` were computed from (the parameters
    their backward would reach)."""
    reached = {id(o) for o in outputs if o.requires_grad and o.grad_fn is None}
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        leaf = getattr(fn, "variable", None)  # AccumulateGrad: the leaf it adds into
        if leaf is not None:
            reached.add(id(leaf))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return reached


def split_dict(out) -> tuple[tuple, list[str] | None]:
    """predict's outputs of one batch as a tuple, and the keys where the module returned a
    dict (None otherwise). Of a dict, only the tensors: a value that is None or a tuple
    (as a Hugging Face model returns for an absent loss or its cache) has no array to
    give, and Hugging Face's own `to_tuple` leaves None out likewise."""
    if isinstance(out, Mapping):
        keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        return tuple(out[k] for k in keys), keys
    return (out if isinstance(out, tuple) else (out,)), None
