"""Forward FLOPs per sample of a model, whatever strategy wrapped it.

The model's FLOPs do not depend on how it is split over ranks, so they are counted on the
meta device (no data, no compute) with every parameter at its full, global shape (a
DTensor's shape is the global one). The hooks strategies hang on modules (FSDP's
all-gathers, tensor parallelism's input redistribution) are set aside for the count: they
move data between ranks and add no model FLOPs, and a collective run on one rank alone
would wait forever.

Example:
    flops = forward_flops_per_sample(module, x[:1])    # None when it cannot be counted
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


@contextlib.contextmanager
def _hooks_set_aside(module: nn.Module):
    """Every submodule's forward hooks removed for the block, then put back as they were."""
    kept = [(m, name, getattr(m, name)) for m in module.modules() for name in _HOOK_DICTS
            if getattr(m, name, None)]
    try:
        for m, name, hooks in kept:
            setattr(m, name, type(hooks)())
        yield
    finally:
        for m, name, hooks in kept:
            setattr(m, name, hooks)


def _meta(x):
    if isinstance(x, (tuple, list)):
        return type(x)(_meta(v) for v in x)
    return x.to("meta") if torch.is_tensor(x) else x


def _count(module: nn.Module, example) -> float:
    state = {k: torch.empty(v.shape, dtype=v.dtype, device="meta")
             for k, v in [*module.named_parameters(), *module.named_buffers()]}
    args = example if isinstance(example, tuple) else (example,)
    modes = [(m, m.training) for m in module.modules()]
    try:
        with _hooks_set_aside(module), FlopCounterMode(display=False) as counter:
            functional_call(module, state, _meta(args))
    finally:
        for m, training in modes:
            m.training = training
    return float(counter.get_total_flops())


def forward_flops_per_sample(module: nn.Module, example) -> float | None:
    """FLOPs of one sample's forward pass through `module` (sharded or not).

    Args:
        module: the model, as a strategy left it (plain, DDP, FSDP or tensor parallel).
        example: one sample with batch dimension 1 (tensor or tuple of tensors).

    Returns:
        FLOPs, or None when the meta pass fails (an op without a meta kernel) or counts none.
    """
    inner = getattr(module, "module", module)  # DDP's wrapped model
    for n in (1, 2):  # BatchNorm refuses a batch of 1 in training mode
        batch = example if n == 1 else _meta(tuple(torch.cat([x] * n) for x in (
            example if isinstance(example, tuple) else (example,))))
        try:
            flops = _count(inner, batch) / n
        except Exception:  # noqa: BLE001 - a figure we cannot count is left out, not guessed
            continue
        return flops or None
    return None
