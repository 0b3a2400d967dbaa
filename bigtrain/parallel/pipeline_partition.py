"""Cutting a chain of layers into pipeline stages of (nearly) equal cost.

Three steps, each usable alone:

1. `chain_layers(model)`: the model as an ordered list of (name, layer) that a pipeline may
   cut between. A model declares it with `pp_layers()` (bigtrain.zoo.gpt.GPT) or `chain()`
   (a Keras-style graph); otherwise a module exposing `embed`, `blocks` (ModuleList) and
   `head` is cut around its blocks, and any `nn.Sequential` between its children.
2. `measure_layer_costs(layers, sample)`: seconds of forward + backward per layer on one
   sample micro-batch (embedding and head cost differs from a block, so we time them).
3. `balanced_partition(costs, parts)`: contiguous parts minimising the slowest part's cost
   (the pipeline's step time is set by its slowest stage), ties broken towards even parts.
   On devices of unequal speed, `device_aware_partition(cost_matrix, stage_owner)` does the
   same with each layer's cost as measured on the device that would own its stage, so a
   faster device gets more layers.

Example:
    layers = chain_layers(model)
    costs = measure_layer_costs(layers, torch.randint(0, 64, (2, 16)))
    counts = balanced_partition(costs, parts=2)       # e.g. [3, 3]: layers per stage
    # rank 1 three times slower than rank 0, one stage each:
    device_aware_partition([[1.0] * 8, [3.0] * 8], stage_owner=[0, 1])   # [6, 2]
"""
from __future__ import annotations

import contextlib
import time
from typing import Sequence

import torch
from torch import nn

from bigtrain.parallel.slow_ranks import slowed
from bigtrain.plan.partition import balanced_partition, device_aware_partition  # noqa: F401


def chain_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The cut-able layers of `model` in execution order, with their state-dict prefixes.

    Args:
        model: a GPT-like module (`embed`, `blocks`, `head`) or an `nn.Sequential`.

    Raises:
        TypeError: when the model is neither; the message says how to make it cut-able.
    """
    inner = getattr(model, "module", None)  # a thin wrapper (e.g. a Keras-style Model)
    declared = getattr(model, "pp_layers", None)  # the model's own plan (zoo GPT)
    if callable(declared):
        return list(declared())
    if all(hasattr(model, a) for a in ("embed", "blocks", "head")):
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
        return [("embed", model.embed), *blocks, ("head", model.head)]
    if isinstance(model, nn.Sequential):
        # every position, as forward runs them (named_children lists a repeated module once)
        return [(n, m) for n, m in model._modules.items() if m is not None]
    chain = getattr(model, "chain", None)  # a Keras-style functional/Sequential graph
    if callable(chain) and chain() is not None:
        return [(f"layers.{layer.name}", layer) for layer in chain()]
    if isinstance(inner, nn.Module) and inner is not model:
        return [(f"module.{n}", m) for n, m in chain_layers(inner)]
    raise TypeError(
        f"cannot cut a {type(model).__name__} into pipeline stages: pass an nn.Sequential, "
        "or a module exposing `embed`, `blocks` (nn.ModuleList) and `head` whose forward is "
        "head(blocks(embed(x))) (like bigtrain.zoo.gpt.GPT)")


def outside_chain(model: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> list[str]:
    """Names of `model`'s parameters and buffers that no layer of the chain holds. A model
    cut by convention (`embed`, `blocks`, `head`) may keep a final LayerNorm or a scale of
    its own beside them; the stages run the chain alone, so those would never take part.

    Example:
        outside_chain(gpt_with_ln_f_beside_head, chain_layers(...))  # ["ln_f.weight", ...]
    """
    inside = {id(t) for _, layer in layers for t in (*layer.parameters(), *layer.buffers())}
    return [n for n, t in (*model.named_parameters(), *model.named_buffers())
            if id(t) not in inside]


def chain_differs(model: nn.Module, layers: Sequence[tuple[str, nn.Module]],
                  sample: torch.Tensor) -> str | None:
    """Why running the chain's layers one after another on `sample` does not give
    `model(sample)` (None when it does, to float rounding). A model cut by convention may do
    more in its forward than head(blocks(embed(x))): scale the embedding, hand the blocks a
    causal mask. Evaluation mode (no dropout), no gradients; buffers and random streams are
    left as they were (`state_kept`)."""
    modes = [(m, m.training) for m in model.modules()]  # a frozen BatchNorm stays in eval
    with state_kept([model], sample.device), torch.no_grad():
        model.eval()
        try:
            want, got = model(sample), sample
            for _, layer in layers:
                got = layer(got)
        except Exception as e:  # noqa: BLE001 - a layer that cannot run alone is the answer
            return f"a layer of the chain fails on the output of the one before ({e})"
        finally:
            for m, training in modes:
                m.training = training
    if not (torch.is_tensor(want) and torch.is_tensor(got)) or want.shape != got.shape:
        return "the chain's output differs in type or shape from forward's"
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    if not torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-5 * max(1.0, scale)):
        diff = float((got.float() - want.float()).abs().max())
        return f"the chain's output differs from forward's by up to {diff:.3g}"
    return None


def refuse_off_chain(model: nn.Module, layers: Sequence[tuple[str, nn.Module]],
                     sample: torch.Tensor | None = None) -> None:
    """ValueError when a pipeline running `layers` one after another would not train
    `model`: weights outside them (`outside_chain`), or, given a `sample` input, a forward
    that computes something else (`chain_differs`). A model cut by convention (`embed`,
    `blocks`, `head`) is trusted to compute head(blocks(embed(x))); these check it."""
    kind, names = type(model).__name__, _some([n for n, _ in layers])
    outside = outside_chain(model, layers)
    if outside:
        raise ValueError(
            f"{kind} holds {_some(outside)} outside the layers a pipeline runs ({names}): "
            "the stages would skip them. Move them into a layer of the chain (e.g. a final "
            "LayerNorm into `head`), so that forward is head(blocks(embed(x))), or use a "
            "data-parallel strategy (ddp, zero1/2/3, fsdp_offload) or tensor")
    why = None if sample is None else chain_differs(model, layers, sample)
    if why is not None:
        raise ValueError(
            f"{kind}'s forward does more than run the layers a pipeline cuts ({names}) one "
            f"after another: {why}. A pipeline runs only those layers, each on the one "
            "before's output; move the extra work (a scale, a causal mask) into them, or use "
            "a data-parallel strategy (ddp, zero1/2/3, fsdp_offload) or tensor")


def _some(names: Sequence[str], n: int = 4) -> str:
    """Up to `n` names, quoted, and how many more."""
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def block_count(layers: Sequence[tuple[str, nn.Module]]) -> int:
    """Layers that are transformer blocks (names "blocks.<i>"), or all layers of a chain."""
    n = sum(1 for name, _ in layers if name.split(".")[-2:-1] == ["blocks"])
    return n or len(layers)


def shared_buffer(layers: Sequence[tuple[str, nn.Module]]) -> tuple[str, str] | None:
    """The names of two positions of the chain that hold the same buffer (one BatchNorm
    placed twice, say), or None. Stages on different ranks would each move a copy of it."""
    first: dict[int, int] = {}
    for i, (_, layer) in enumerate(layers):
        for b in layer.buffers():
            j = first.setdefault(id(b), i)
            if j != i:
                return layers[j][0], layers[i][0]
    return None


def measure_layer_costs(layers: Sequence[tuple[str, nn.Module]], sample: torch.Tensor,
                        repeats: int = 3, slowdown: float = 1.0) -> list[float]:
    """Seconds of forward + backward per layer on `sample`, the best of `repeats` runs.

    Each layer is fed the previous layer's output (detached), and back-propagates a sum of
    its output, so the backward of a layer is timed without its neighbours. Gradients
    left on parameters are cleared, and the timing leaves no other trace: buffers
    (BatchNormalization's moving statistics, step counters) and the random number
    generators (dropout) are as they were, so training matches one process.

    Args:
        layers: from `chain_layers`.
        sample: one micro-batch of model input.
        repeats: timing repeats per layer; the minimum is kept (least disturbed by noise).
        slowdown: the slow-rank knob's factor for this rank (bigtrain.parallel.slow_ranks):
            each timed run sleeps (slowdown - 1) x its compute time, as training will.
    """
    with state_kept([layer for _, layer in layers], sample.device):
        return _timed(layers, sample, repeats, slowed(_forward_backward, slowdown))


@contextlib.contextmanager
def state_kept(modules: Sequence[nn.Module], device: torch.device):
    """Restore the modules' buffers and the random number generators (CPU, and `device`'s
    when it is a GPU) on exit: forwards that are not training steps (timing, the pipeline
    schedule's shape pass) move both in training mode.

    Example:
        with state_kept([model], torch.device("cpu")):
            model(torch.randn(2, 13))        # BatchNorm statistics, dropout: as before
    """
    buffers = {id(b): b for m in modules for b in m.buffers()}.values()
    saved = [(b, b.detach().clone()) for b in buffers]
    gpus = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, copy in saved:
                    b.copy_(copy)


def _timed(layers, sample: torch.Tensor, repeats: int, run) -> list[float]:
    costs, x = [], sample
    for _, layer in layers:
        best = float("inf")
        for _ in range(repeats):
            inp = x.detach().requires_grad_(x.is_floating_point())
            t0 = time.perf_counter()
            out = run(layer, inp)
            best = min(best, time.perf_counter() - t0)
        for p in layer.parameters():
            p.grad = None
        costs.append(best)
        x = out.detach()
    return costs


def sample_input_for(module: nn.Module, guess: bool = True) -> torch.Tensor | None:
    """A 2-sample input for timing layers, when the model tells its input shape: its own
    `sample_input(n)` (bigtrain.zoo.gpt.GPT) or a Keras-style graph's Input; with `guess`,
    else one shaped by the width of a first Linear (a guess: a Linear may take 3-D input)."""
    declared = getattr(module, "sample_input", None)
    if callable(declared):
        return declared(2)
    inputs = getattr(module, "input_tensors", None)  # a Keras-style graph's Input
    if inputs and len(inputs) == 1:
        shape, dtype = (2, *inputs[0].shape), inputs[0].dtype
        return torch.randn(shape, dtype=dtype, generator=_own_rng()) \
            if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)  # id 0: any vocab
    if not guess:
        return None
    # the first layer with weights (a Dense after a Conv2D does not tell the input's shape)
    first = next((m for m in module.modules() if next(m.parameters(False), None) is not None),
                 None)
    if isinstance(first, nn.Linear):
        return torch.randn(2, first.in_features, generator=_own_rng())
    return None


def guessed_layer_costs(layers: Sequence[tuple[str, nn.Module]], sample: torch.Tensor | None,
                        slowdown: float = 1.0) -> list[float]:
    """`measure_layer_costs` on a guessed `sample` (`sample_input_for`); parameter counts
    (`parameter_costs`, times `slowdown`) when there is none or the layers refuse it (a
    first Linear fed (batch, steps, width), which a 2-D guess does not match). The refusal
    is the same on every rank, so all ranks weigh their layers alike."""
    if sample is not None:
        try:
            return measure_layer_costs(layers, sample, slowdown=slowdown)
        except Exception:  # noqa: BLE001 - any error: the guess does not fit the model
            for _, layer in layers:  # a failed backward may have left gradients
                for p in layer.parameters():
                    p.grad = None
    return [c * slowdown for c in parameter_costs(layers)]


def _own_rng() -> torch.Generator:
    """A generator of its own for timing inputs, so that making one leaves the global
    random stream (weight init, dropout) where one process would have it."""
    return torch.Generator().manual_seed(0)


def _forward_backward(layer: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    out = layer(inp)
    out.float().sum().backward()
    return out


def parameter_costs(layers: Sequence[tuple[str, nn.Module]]) -> list[float]:
    """A stand-in cost when no sample input is known: parameters per layer (+1)."""
    return [float(sum(p.numel() for p in layer.parameters()) + 1) for _, layer in layers]


def slowest_replica_costs(rank_costs: Sequence[Sequence[float]],
                          owner_of_rank: Sequence[int]) -> list[list[float]]:
    """[owner x layer] costs from [rank x layer] costs: per owner (pipeline coordinate), the
    element-wise maximum over the ranks it covers (its data/tensor-parallel replicas move in
    lock step, so the slowest sets the pace).

    Example:
        >>> slowest_replica_costs([[1, 2], [3, 1], [1, 1]], owner_of_rank=[0, 0, 1])
        [[3.0, 2.0], [1.0, 1.0]]
    """
    out: dict[int, list[float]] = {}
    for costs, owner in zip(rank_costs, owner_of_rank):
        prev = out.get(owner)
        out[owner] = ([float(c) for c in costs] if prev is None
                      else [max(p, float(c)) for p, c in zip(prev, costs)])
    return [out[o] for o in sorted(out)]


def stage_costs(costs: Sequence[float], counts: Sequence[int]) -> list[float]:
    """Sum of layer costs per stage for the layer `counts` of a partition."""
    out, start = [], 0
    for c in counts:
        out.append(float(sum(costs[start:start + c])))
        start += c
    return out
