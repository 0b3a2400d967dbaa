"""What the heaviest pipeline stage holds, cut as bigtrain's pipeline cuts the model.

The pipeline (bigtrain.parallel.pipeline) cuts the model's chain of layers
(`pipeline_partition.chain_layers`) into contiguous stages with `device_aware_partition`,
each stage priced on forward + backward times its own rank measures at start. The planner
cannot know those times before the run, so it applies the same rule to each layer's forward
FLOPs (one meta-device pass), or to parameter counts, the runtime's own stand-in, where the
FLOPs cannot be counted; and as the measured times move with the host's load (the same
model was cut [1, 2] and [2, 1] on a busy 2-core machine), it counts the heaviest stage of
the cuts the rule makes when one rank times its layers up to TIMING_SPREAD times slower
than the others. The plan layer sits below parallel/ and
cannot import the runtime's functions: `chain_modules` restates `chain_layers`, and
tests/plan/test_plan_accuracy_pipeline.py holds the two equal; the cut itself is one
function both use (bigtrain.plan.partition).

What one pipeline rank holds (the runtime as it is, measured on 2 gloo ranks):
    parameters   the whole model: every rank builds it and keeps its layers, its stage
                 only runs some of them
    gradients    its stage's parameters
    optimizer    its stage's parameters
    accumulation with several micro-batches, autograd adds each micro-batch's gradient of a
                 tensor to the one kept: the stage's biggest tensor briefly twice

Example:
    from torch import nn
    from bigtrain.plan.stages import chain_figures, heaviest_stage
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 10))
    layers = chain_figures(model, (torch.zeros(1, 1024),))
    heaviest_stage(layers, stages=2)   # StageShare(params=4_198_400, ..., counts=(1, 2))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from bigtrain.plan.partition import balanced_partition, device_aware_partition


@dataclass(frozen=True)
class LayerFigures:
    """One cut-able layer of the chain.

    Attributes:
        params: its parameters (elements).
        largest_tensor: elements of its biggest parameter tensor.
        flops: forward FLOPs of one sample (0 when not counted).
    """
    params: int
    largest_tensor: int
    flops: float


#: how much slower one rank may time the same layers than another (a loaded host, a cold
#: first layer): the runtime's cut then moves layers off that rank, so the planner counts
#: the heaviest stage any such cut leaves
TIMING_SPREAD = 1.5
#: ranks slowed in turn to find those cuts (the first, the last and evenly spaced ones
#: between): each is one cut of O(layers^2 x stages), a second for 100 layers on 64 stages
SLOWED_RANKS = 4


@dataclass(frozen=True)
class StageShare:
    """The heaviest stage the runtime's cut may leave on one rank.

    Attributes:
        params: parameters of that stage (elements).
        largest_tensor: elements of its biggest parameter tensor.
        layers: (first, end) layer indices of that stage in the chain.
        counts: layers per stage of the cut by FLOPs, in stage order.
    """
    params: int
    largest_tensor: int
    layers: tuple[int, int]
    counts: tuple[int, ...]


def chain_modules(model: nn.Module) -> list[nn.Module] | None:
    """The layers a pipeline cuts between, in order, found as the runtime finds them
    (bigtrain.parallel.pipeline_partition.chain_layers; the plan layer cannot import it, a
    test holds the two equal): the model's `pp_layers()`, `embed` + `blocks` + `head`, an
    nn.Sequential's positions, a Keras-style graph's `chain()`, or those of a wrapped
    `module`. None: the pipeline cannot cut this model."""
    declared = getattr(model, "pp_layers", None)
    if callable(declared):
        return [m for _, m in declared()]
    if all(hasattr(model, a) for a in ("embed", "blocks", "head")):
        return [model.embed, *model.blocks, model.head]
    if isinstance(model, nn.Sequential):
        return [m for m in model._modules.values() if m is not None]
    chain = getattr(model, "chain", None)
    if callable(chain) and chain() is not None:
        return list(chain())
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and inner is not model:
        return chain_modules(inner)
    return None


def chain_figures(module: nn.Module, example: tuple) -> tuple[LayerFigures, ...] | None:
    """Per-layer figures of the chain the pipeline would cut, or None when it cannot cut
    `module` (no chain, as the runtime would refuse).

    Args:
        module: the single-device model.
        example: one sample (a tuple of inputs with batch dimension 1).
    """
    layers = chain_modules(module)
    if not layers:
        return None
    flops = _layer_flops(module, layers, example)
    return tuple(LayerFigures(sum(p.numel() for p in m.parameters()),
                              max((p.numel() for p in m.parameters()), default=0), f)
                 for m, f in zip(layers, flops))


def _layer_flops(module: nn.Module, layers: list[nn.Module], example: tuple) -> list[float]:
    """Forward FLOPs of each layer in one meta-device pass; zeros when the pass fails."""
    start: dict[int, float] = {}
    spent = [0.0] * len(layers)
    index = {id(m): i for i, m in enumerate(layers)}
    with FlopCounterMode(display=False) as counter:
        def before(mod, inp):
            start[id(mod)] = counter.get_total_flops()

        def after(mod, inp, out):
            spent[index[id(mod)]] += counter.get_total_flops() - start[id(mod)]

        handles = [h for m in layers for h in (m.register_forward_pre_hook(before),
                                               m.register_forward_hook(after))]
        try:
            state = {k: torch.empty_like(v, device="meta") for k, v in
                     list(module.named_parameters()) + list(module.named_buffers())}
            functional_call(module, state, tuple(x.to("meta") for x in example))
        except Exception:  # noqa: BLE001 -- no meta kernel, data-dependent code: use params
            spent = [0.0] * len(layers)
        finally:
            for h in handles:
                h.remove()
    return spent


def heaviest_stage(layers: Sequence[LayerFigures], stages: int,
                   spread: float = TIMING_SPREAD) -> StageShare:
    """The stage with the most parameters among the cuts the runtime may make.

    The runtime cuts by layer times each rank measures (a stage priced on the rank that owns
    it: `device_aware_partition`), which the planner cannot know: it prices each layer by its
    FLOPs (by parameters + 1, as the runtime, when no FLOPs were counted), and takes the cuts
    the same rule makes when one rank times every layer up to `spread` times slower than the
    others (a loaded rank hands layers to its neighbours); the heaviest stage of those cuts
    is returned. A rank slowed `spread` times moves the cut only as far as that slowdown
    pays: GPT-like chains (embedding, 4 blocks, head) on 2 ranks go from [3, 3] to [4, 2],
    never to [5, 1] (a stage costing 1.4 x the best cut's, but beaten by [4, 2] however the
    one rank is slowed).

    Raises:
        ValueError: fewer layers than stages (the runtime refuses that model too).
    """
    counted = any(f.flops > 0 for f in layers)  # an activation layer counts 0 FLOPs
    costs = [f.flops if counted else f.params + 1.0 for f in layers]
    counts = balanced_partition(costs, stages)
    cuts = {tuple(counts)}
    owners = list(range(stages))
    # each rank slowed in turn (at most SLOWED_RANKS of them, spread over the pipeline)
    tried = min(stages, SLOWED_RANKS)
    for slow in sorted({round(k * (stages - 1) / max(1, tried - 1)) for k in range(tried)}):
        matrix = [[c * (spread if r == slow else 1.0) for c in costs] for r in owners]
        cuts.add(tuple(device_aware_partition(matrix, owners)))
    best, where = -1, (0, len(layers))
    for cut in cuts:
        first = 0
        for c in cut:
            held = sum(f.params for f in layers[first:first + c])
            if held > best:
                best, where = held, (first, first + c)
            first += c
    first, end = where
    return StageShare(best, max(f.largest_tensor for f in layers[first:end]), where,
                      tuple(counts))


def pipeline_states(chain: Sequence[LayerFigures] | None, n_params: float, *, stages: int,
                    param_bytes: int, grad_bytes: int, optimizer_bytes: int,
                    microbatches: int) -> tuple[float, float, float, float]:
    """(parameter, gradient, optimizer, accumulation bytes) of the heaviest pipeline rank.

    Parameters: the whole model (module docstring). Gradients and optimizer state: the
    heaviest stage's, or 1/stages of the model when the chain is unknown or shorter than the
    stages. Accumulation: with several micro-batches, the gradient of the stage's biggest
    tensor a second time while autograd adds it to the one kept.

    Example:
        >>> pipeline_states(None, 1000, stages=2, param_bytes=4, grad_bytes=4,
        ...                 optimizer_bytes=8, microbatches=1)
        (4000.0, 2000.0, 4000.0, 0.0)
    """
    share = heaviest_stage(chain, stages) if chain and len(chain) >= stages else None
    stage = float(share.params) if share else n_params / stages
    accumulated = float(share.largest_tensor) if share and microbatches > 1 else 0.0
    return (param_bytes * float(n_params), grad_bytes * stage, optimizer_bytes * stage,
            grad_bytes * accumulated)


def pipeline_note(chain: Sequence[LayerFigures] | None, stages: int) -> str:
    """The plan's note on how the pipeline row was counted."""
    head = ("pipeline: every rank keeps the whole model's parameters (the runtime builds the "
            "model on each rank and leaves the layers of other stages in place); gradients "
            "and optimizer state are the heaviest stage's")
    if not chain or len(chain) < stages:
        return head + (f", taken as 1/{stages} of the model (the layer chain is unknown or "
                       f"has fewer than {stages} layers)")
    share = heaviest_stage(chain, stages)
    first, end = share.layers
    return head + (f": layers {first}-{end - 1} of the chain. The runtime cuts by the layer "
                   f"times it measures at start ({list(share.counts)} layers per stage by "
                   f"FLOPs), and a rank that times them up to {TIMING_SPREAD}x slower moves "
                   "the cut, so this is the heaviest stage any such cut leaves")


def stage_work_share(chain: Sequence[LayerFigures] | None, stages: int) -> float:
    """Fraction of a step's work the heaviest pipeline stage (`heaviest_stage`, the one whose
    states the plan counts) runs: its layers' forward FLOPs over the chain's (parameters
    where no FLOPs were counted); 1/stages when the chain is unknown or too short. The
    stages run one after the other for each micro-batch, so this rank's share, not 1/stages,
    sets the step.

    Example:
        >>> stage_work_share(None, 4)
        0.25
    """
    if not chain or len(chain) < stages:
        return 1.0 / stages
    first, end = heaviest_stage(chain, stages).layers
    counted = any(f.flops > 0 for f in chain)
    work = [f.flops if counted else float(f.params) for f in chain]
    return sum(work[first:end]) / sum(work) if sum(work) > 0 else 1.0 / stages


__all__ = ["LayerFigures", "StageShare", "chain_figures", "chain_modules",
           "heaviest_stage", "pipeline_note", "pipeline_states", "stage_work_share"]
