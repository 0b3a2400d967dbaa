"""What the planner needs to know about a model, measured from the real module.

Method: one forward pass of one sample, run on the "meta" device (shapes only, no memory, no
arithmetic) through `torch.func.functional_call` with meta copies of the parameters, so the
user's module is neither copied nor changed. Forward hooks on every leaf module add up the
elements of the tensors each one returns; that sum (plus the input) approximates what
autograd saves for backward. `FlopCounterMode` counts the forward FLOPs of the same pass.
When a module cannot run on meta tensors (data-dependent Python control flow, `.item()`), the
pass runs for real on one sample under `torch.no_grad()` instead.

A leaf that keeps more for backward than it returns says so with a
`saved_activation_elems(input)` method (recurrent layers: gates and states of every step).
FLOPs count matrix products and convolutions: a convolution 2 x output positions x filters x
kernel volume x input channels per group; a recurrent layer 2 x steps x gates x units x
(features + units).

Known gaps: intermediates inside a leaf module (the T x T attention matrix of a fused
attention call, for instance) are not leaf outputs and are missed; in-place activations are
counted although autograd may not keep them. A leaf that returns its input object itself
(Dropout(p=0), Identity) adds nothing: autograd keeps no second copy.

Example:
    from torch import nn
    from bigtrain.plan.profile import profile_module
    prof = profile_module(nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)))
    prof.n_params, prof.activation_elems_per_sample, prof.forward_flops_per_sample
"""
from __future__ import annotations

import contextlib
import inspect
import statistics
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from bigtrain.plan.stages import LayerFigures, chain_figures


@dataclass(frozen=True)
class ModelProfile:
    """Sizes of one model, per sample where it says so.

    Attributes:
        n_params: number of (unique) parameters.
        tokens_per_sample: sequence length for token models, 1 otherwise.
        activation_elems_per_sample: saved activation elements of one sample (None: unknown).
        forward_flops_per_sample: forward FLOPs of one sample (None: use 2 * n_params * tokens).
        largest_unit_params: parameters of the biggest leaf module (ZeRO-3 gathers one at a
            time, prefetching the next).
        second_unit_params: parameters of the second biggest one (the most a unit gathered
            ahead of the biggest can hold; None: unknown, taken as the biggest).
        boundary_elems_per_sample: elements of a typical leaf output, the size a pipeline
            stage sends to the next one (median of leaf outputs).
        linear_share: fraction of activation elements that are nn.Linear outputs.
        n_linear: nn.Linear layers (tensor parallelism communicates once per pair).
        n_units: leaf modules holding parameters (ZeRO-2/3 communicate once per unit).
        chain: per-layer figures of the chain a pipeline cuts (bigtrain.plan.stages), None
            when the model is no chain or only its parameter count is known.
        method: how the figures were obtained, for the plan's notes.
    """
    n_params: int
    tokens_per_sample: int = 1
    activation_elems_per_sample: float | None = None
    forward_flops_per_sample: float | None = None
    largest_unit_params: int | None = None
    second_unit_params: int | None = None
    boundary_elems_per_sample: float | None = None
    linear_share: float = 0.5
    n_linear: int | None = None
    n_units: int | None = None
    chain: tuple[LayerFigures, ...] | None = None
    method: str = "parameter count only"

    def __post_init__(self):
        if self.n_params <= 0:
            raise ValueError(f"n_params must be > 0, got {self.n_params}")
        if self.tokens_per_sample < 1:
            raise ValueError(f"tokens_per_sample must be >= 1, got {self.tokens_per_sample}")


def count_params(module: nn.Module) -> int:
    """Unique parameters of `module` (tied weights counted once)."""
    return sum(p.numel() for p in module.parameters())


def _example_input(module: nn.Module, seq_len: int | None, device):
    """One sample: from a Keras-style graph's `Input`s (conv, recurrent, any first layer), or
    shaped for the first parameterised leaf: token ids or a feature vector."""
    graph = getattr(module, "input_tensors", None) or \
        getattr(getattr(module, "net", None), "input_tensors", None)
    if graph:
        xs = tuple(torch.zeros(1, *t.shape, dtype=t.dtype, device=device) for t in graph)
        return xs if len(xs) > 1 else xs[0]
    needed = _required_inputs(module)
    if len(needed) > 1:
        raise ValueError(f"cannot guess the inputs of {type(module).__name__}: its forward "
                         f"takes {len(needed)} inputs ({', '.join(needed)}) and only a single "
                         "one can be guessed from the first layer; pass example_input=(one "
                         "sample of each, with a leading batch dimension of 1), or build the "
                         "model as a bigtrain Model with Input layers")
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            return torch.zeros(1, seq_len or 1, dtype=torch.long, device=device)
        if isinstance(m, nn.Linear):
            shape = (1, m.in_features) if seq_len is None else (1, seq_len, m.in_features)
            return torch.zeros(*shape, device=device)
        if next(m.parameters(recurse=False), None) is not None:
            break
    raise ValueError(f"cannot guess an input for {type(module).__name__}: its first layer is "
                     "neither nn.Embedding nor nn.Linear; pass example_input=<one sample "
                     "with a leading batch dimension of 1>")


def example_sample(module: nn.Module, seq_len: int | None, example_input=None) -> tuple:
    """One sample as a tuple of tensors with a leading batch dimension of 1: `example_input`
    (a tensor or tuple), or guessed as `profile_module` does."""
    if example_input is None:
        device = next(module.parameters()).device
        example_input = _example_input(module, seq_len, device)
    return example_input if isinstance(example_input, tuple) else (example_input,)


def _required_inputs(module: nn.Module) -> list[str]:
    """Names of the arguments `module.forward` cannot do without."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin or C++ forward: assume one input
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


def _float_elems(out) -> int:
    """Elements of the floating-point tensors in a module output (tuples/dicts walked)."""
    if isinstance(out, torch.Tensor):
        return out.numel() if out.is_floating_point() else 0
    if isinstance(out, (tuple, list)):
        return sum(_float_elems(o) for o in out)
    if isinstance(out, dict):
        return sum(_float_elems(o) for o in out.values())
    return 0


def _traced_pass(module: nn.Module, example, on_meta: bool):
    """Run one forward pass with leaf hooks; returns (leaf outputs, linear elems, flops,
    elements kept inside leaves)."""
    leaf_out: list[int] = []
    linear = [0, 0]  # nn.Linear output elements, elements kept inside leaves

    def hook(mod, inp, out):
        if any(out is x for x in inp):
            return  # an identity leaf (Dropout at p=0 or in eval, Identity) keeps nothing new
        n = _float_elems(out)
        leaf_out.append(n)
        if isinstance(mod, nn.Linear):
            linear[0] += n
        inner = getattr(mod, "saved_activation_elems", None)  # e.g. a recurrent layer's
        if inner is not None:                                 # gates and states per step
            linear[1] += inner(*inp)

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with FlopCounterMode(display=False) as counter:
            if on_meta:
                state = {k: torch.empty_like(v, device="meta")
                         for k, v in list(module.named_parameters()) + list(module.named_buffers())}
                meta_x = tuple(x.to("meta") for x in example)
                functional_call(module, state, meta_x)
            else:
                with torch.no_grad():
                    module(*example)
    finally:
        for h in handles:
            h.remove()
    return leaf_out, linear[0], counter.get_total_flops(), linear[1]


@contextlib.contextmanager
def _state_kept(module: nn.Module):
    """Put back the modules' train/eval flags and the buffers' values (BatchNorm's running
    statistics and batch count) after a real forward pass, so profiling changes nothing."""
    modes = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers() if b.device.type != "meta"]
    # and the RNG: a profiling pass through dropout must not shift the training's draws
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=gpus):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, training in modes:
            m.training = training


def _measure(module: nn.Module, example: tuple):
    """Per-sample (leaf outputs, linear elems, flops, inner elems) and how they were got.

    Tries a meta-device pass, then a real one (see the module docstring), each first on the
    one sample and then on it twice: a layer that needs more than one value per channel in
    training mode (BatchNorm) refuses a batch of 1. Figures of a two-sample pass are halved
    (an output that does not grow with the batch, like GPT's position embedding, is then
    counted half). The last error is raised when every pass fails.
    """
    error = None
    for on_meta, n in ((True, 1), (True, 2), (False, 1), (False, 2)):
        batch = example if n == 1 else tuple(torch.cat([x] * n) for x in example)
        try:
            with _state_kept(module):
                leaf_out, linear, flops, inner = _traced_pass(module, batch, on_meta)
        except Exception as e:  # noqa: BLE001 -- an op without a meta kernel, BatchNorm at 1
            error = e
            continue
        how = ("meta-device" if on_meta else "real") + \
            (" forward pass" if n == 1 else f" forward pass of {n} samples, divided by {n}")
        if n == 1:
            return leaf_out, linear, flops, inner, how
        return ([e / n for e in leaf_out], linear / n, flops / n, inner / n, how)
    raise error


def profile_module(module: nn.Module, *, seq_len: int | None = None,
                   example_input=None) -> ModelProfile:
    """Measure parameters, activations per sample and FLOPs per sample of `module`.

    Args:
        module: the single-device model.
        seq_len: tokens per sample for sequence models (shapes the guessed input).
        example_input: one sample with batch dimension 1 (tensor or tuple of tensors);
            guessed from the first layer when None.

    Example:
        >>> from torch import nn
        >>> profile_module(nn.Linear(4, 2)).n_params
        10
    """
    first = next(module.parameters(), None)
    if first is None:
        raise ValueError(f"{type(module).__name__} has no parameters: there is nothing to "
                         "train, so nothing to plan")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters()):
        raise ValueError(f"{type(module).__name__} holds lazy layers (e.g. nn.LazyLinear) whose "
                         "weights do not exist yet: run one batch through the model first "
                         "(model(x[:1])), then plan or summarise it")
    n_params = count_params(module)
    if example_input is None:
        device = first.device
        example_input = _example_input(module, seq_len, device)
    example = example_input if isinstance(example_input, tuple) else (example_input,)
    if example[0].shape[0] != 1:
        raise ValueError(f"example_input must hold one sample (batch dimension 1), got shape "
                         f"{tuple(example[0].shape)}")
    leaf_out, linear, flops, inner, how = _measure(module, example)
    inputs = sum(_float_elems(x) for x in example)
    total = sum(leaf_out) + inputs + inner
    units = [sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules()]
    units = [u for u in units if u]
    tokens = seq_len or 1
    return ModelProfile(
        n_params=n_params, tokens_per_sample=tokens,
        activation_elems_per_sample=float(total),
        forward_flops_per_sample=float(flops) if flops else None,
        largest_unit_params=max(units) if units else None,
        second_unit_params=sorted(units)[-2] if len(units) > 1 else 0,
        boundary_elems_per_sample=float(statistics.median(leaf_out)) if leaf_out else None,
        linear_share=linear / total if total else 0.5,
        n_linear=sum(isinstance(m, nn.Linear) for m in module.modules()),
        n_units=len(units),
        chain=chain_figures(module, example),
        method=f"{how}: leaf-module output elements and FlopCounterMode FLOPs of one sample")
