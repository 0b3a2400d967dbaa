"""Parameters that get no gradient (a layer the forward never uses), for DDP's sake.

DistributedDataParallel waits for every trainable parameter's gradient before it averages
the bucket holding it. A parameter the forward never uses gets none: its bucket is never
averaged (the first update of its bucket's other parameters is the rank's own, not the
replicas' mean) and the second step stops with torch's "Expected to have finished reduction
in the prior iteration". DDP's `find_unused_parameters=True` handles such parameters by
walking the autograd graph from the outputs after every forward. zero2/zero3/fsdp (FSDP2)
and ddp_balanced average every gradient themselves and simply leave such a parameter as it
is, as one process does. bigtrain's DDP strategies (ddp, zero1, ddp_cpu_optimizer) match them:

    setup:       a forward of the fit's first rows (inference mode: no running statistic
                 moves, no dropout draws) shows which trainable parameters reach no output;
                 if some do not, DDP is built with find_unused_parameters=True, with a warning
                 naming them and the cost (`unreached`, `unused_warning`)
    first step:  after its backward, before any update, parameters still without a
                 gradient (no sample to run, or reached by an output the loss ignores) stop
                 the fit on every rank with an error naming them and the fix (`no_grad_error`)

Example:
    names = unreached(module, x)          # ["unused.weight", "unused.bias"]
"""
from __future__ import annotations

import torch
from torch import nn

from bigtrain.parallel.microbatch import call_module

SHOWN = 6  # parameter names a message lists before "..."


def unreached(module: nn.Module, x) -> list[str]:
    """Names of `module`'s trainable parameters that no output of `module(x)` depends on
    (read from the autograd graph of one forward in inference mode; `x` is a tensor or a
    tuple for several inputs)."""
    trainable = {id(p): n for n, p in module.named_parameters() if p.requires_grad}
    if not trainable:
        return []
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():
            out = call_module(module, x)
    finally:
        module.train(was_training)
    reached = _graph_leaves(_tensors(out))
    return [n for i, n in trainable.items() if i not in reached]


def without_grad(module: nn.Module) -> list[str]:
    """Names of `module`'s trainable parameters whose `.grad` is None (after a backward)."""
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor in a forward's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _graph_leaves(outputs: list[torch.Tensor]) -> set[int]:
    """ids of the leaf tensors (parameters) the autograd graph of `outputs` accumulates into."""
    seen, leaves = set(), set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    for t in outputs:
        if t.requires_grad and t.grad_fn is None:
            leaves.add(id(t))  # an output that is a parameter itself
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)  # AccumulateGrad: the leaf it writes
        if var is not None:
            leaves.add(id(var))
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return leaves


def _listed(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def unused_warning(strategy: str, names: list[str]) -> str:
    """Why `strategy` turns on DDP's find_unused_parameters, and what it costs."""
    return (f"bigtrain: {len(names)} trainable parameters get no gradient under strategy "
            f"{strategy!r} (no output of the forward depends on them: {_listed(names)}). "
            "DDP would wait for their gradients and stop at the second step, so it is built "
            "with find_unused_parameters=True: after every forward it walks the autograd graph "
            "to mark them ready, a cost that grows with the graph (a few percent of a step on "
            "large models). They stay as they are, as in one process. To save the cost, remove "
            "those layers or freeze them (requires_grad=False); to say you know, pass "
            "DataParallel(find_unused_parameters=True) (from bigtrain.parallel; Zero1(...) for "
            "'zero1').")


def no_grad_error(strategy: str, names: list[str]) -> str:
    """The first step's error: parameters DDP waited for in vain, and the fix."""
    return (f"bigtrain: {len(names)} trainable parameters got no gradient in the first "
            f"training step under strategy {strategy!r}: {_listed(names)} (a layer the forward "
            "skips, or one feeding only an output the loss ignores). DDP waits for every "
            "trainable parameter's gradient, so their bucket was never averaged and the next "
            "step would fail; no update was applied. Train with "
            "strategy=DataParallel(find_unused_parameters=True) (from bigtrain.parallel; "
            "Zero1(find_unused_parameters=True) in place of 'zero1'), or with 'zero2', 'zero3' "
            "or 'fsdp', which leave such parameters as they are; or remove those layers or "
            "freeze them (requires_grad=False).")
