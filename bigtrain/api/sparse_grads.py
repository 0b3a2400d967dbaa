"""Sparse gradients (`nn.Embedding(sparse=True)`, `nn.EmbeddingBag(sparse=True)`) under the
optimizers compile builds.

torch's fused and foreach kernels, and most update rules (Keras's and torch's), take dense
gradients only: a sparse one failed inside the kernel ("`_fused_sgd` does not support sparse
gradients"). Every optimizer an OptimizerSpec builds gets a step pre-hook, registered before
Keras's clipping and weight-decay hooks, that decides per param group:

    the group's optimizer                      a sparse gradient ...
    SGD without momentum or weight decay       stays sparse; the group leaves the fused
    (Keras's "sgd", torch.optim.SGD),          kernel for torch's per-tensor loop, where
    no clipping / decay / EMA                  p -= lr * g touches the looked-up rows only
    torch.optim.SparseAdam                     stays sparse (it takes nothing else)
    any other                                  is made dense before the update

A dense copy gives each rule exactly its update with `sparse=False` (Adam's moments decay
on every row, as Keras's do), not a lazy variant such as SparseAdam: the embedding then
costs the memory of a dense gradient, which a warning says once per optimizer.

Example:
    optimizer = torch.optim.Adam(model.parameters())
    watch_sparse_grads(optimizer, rules_active=False)
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch


def keeps_sparse(optimizer: torch.optim.Optimizer, group: dict, rules_active: bool) -> bool:
    """Whether `group` of `optimizer` keeps a sparse gradient: SparseAdam (it takes nothing
    else), or SGD whose update from it equals the dense one (rows without gradient do not
    move either way; momentum and weight decay would move them)."""
    if isinstance(optimizer, torch.optim.SparseAdam):
        return True
    return (isinstance(optimizer, torch.optim.SGD) and not rules_active
            and not group.get("momentum") and not group.get("weight_decay"))


def watch_sparse_grads(optimizer: torch.optim.Optimizer, rules_active: bool) -> None:
    """Register the step pre-hook of the module docstring on `optimizer`.

    Args:
        optimizer: a torch optimizer built for the model.
        rules_active: Keras's clipping, weight decay or EMA hooks will run before the
            update (they read dense gradients).
    """
    watch = _SparseWatch(rules_active)
    watch.hook_id = optimizer.register_step_pre_hook(watch).id


class _SparseWatch:
    """The step pre-hook. A parameter's gradient is sparse or dense for good (its layer
    decides), so each parameter is looked at once, at its first gradient, and only those
    found sparse are looked after at later steps: reading `.grad` of every parameter each
    step cost about 1.5 us a parameter (300 us for 200) on the step's critical path."""

    def __init__(self, rules_active: bool):
        self.rules_active = rules_active
        self.unseen: dict | None = None  # id -> (parameter, its group), no gradient seen yet
        self.sparse: list[tuple[torch.nn.Parameter, dict]] = []
        self.warned = False
        self.hook_id: int | None = None  # its key in the optimizer's step pre-hooks

    def __call__(self, opt, args, kwargs) -> None:
        if self.unseen is None:
            self.unseen = {id(p): (p, g) for g in opt.param_groups for p in g["params"]}
        if self.unseen:
            self._classify()
            if not self.unseen and not self.sparse:
                self._leave(opt)  # every parameter's gradient is dense: nothing left to do
        densified = False
        for p, group in self.sparse:
            if p.grad is None or not p.grad.is_sparse:
                continue
            if keeps_sparse(opt, group, self.rules_active):
                if group.get("fused"):  # torch's fused kernels refuse sparse gradients
                    group["fused"] = False
            else:
                p.grad = p.grad.to_dense()
                densified = True
        if densified and not self.warned:
            self.warned = True
            warnings.warn(
                f"sparse gradients (an Embedding with sparse=True) are made dense for "
                f"{type(opt).__name__}: it updates every row, exactly as with sparse=False, "
                "so the sparse gradient saves no memory; optimizer='sgd' without momentum, "
                "clipping or weight decay keeps them sparse", UserWarning, stacklevel=2)

    def _classify(self) -> None:
        """Sort the parameters that got their first gradient into sparse or done with."""
        for key, (p, group) in list(self.unseen.items()):
            if p.grad is not None:
                del self.unseen[key]
                if p.grad.is_sparse:
                    self.sparse.append((p, group))

    def _leave(self, opt) -> None:
        """Remove this hook, where that is safe now: the optimizer's step is iterating over
        its pre-hooks (an OrderedDict), which allows deleting the entry it has just
        reached when that is the last one (the iterator has no next key to check) and
        raises for any other. Elsewhere the hook stays, and costs one call a step."""
        hooks = opt.__dict__.get("_optimizer_step_pre_hooks")
        if type(hooks) is OrderedDict and hooks and next(reversed(hooks)) == self.hook_id \
                and hooks[self.hook_id] is self:
            del hooks[self.hook_id]
