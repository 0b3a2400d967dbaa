"""`parallelize()`: the one place that composes the ways of splitting a model, in one order.

A single-device model becomes this rank's part of a (pp, dp, tp) mesh by four steps, always
in this order (torchtitan's, for the same reasons):

    1. pipeline (pp)     cut the layer chain into stages; keep this rank's   (`pipeline`)
    2. tensor (tp)       shard each kept part's Linears over "tp"            (apply_tp)
                         (weights tied across pipeline ranks stay whole)
    3. activation        recompute each block's activations in backward      (checkpoint_blocks)
       checkpointing     (after TP: it wraps the sharded blocks as they will run)
    4. data (dp)         replicas start from rank 0's weights (broadcast over "dp"); after
                         each backward `sync_grads` averages their gradients (all-reduce);
                         or a wrapper that does both itself (`replicate=`: DDP, FSDP2)

Steps 1-3 change modules in place and keep parameter names; step 4 is a broadcast now and
an all-reduce per step, or the wrapper's. The strategies only choose the arguments:
TensorParallel, Pipeline and Hybrid a mesh; DataParallel (DDP) and Sharded (FSDP2's
fully_shard) a whole-world replica (`topo=None`) and their wrapper.

Example:
    topo = Topology(ParallelDims.infer(4, tp=2), rank, "cpu")
    (model,) = parallelize(model, topo, activation_checkpointing=True)
    ...; loss.backward(); sync_grads(model.parameters(), topo)
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from torch import nn

from bigtrain.parallel.comm import all_reduce_grads, broadcast_params
from bigtrain.parallel.dims import Topology
from bigtrain.parallel.tensor_plan import apply_tp, check_tp, tp_plan

#: step 1: module -> (this rank's stage modules, ids of parameters tied across pipeline ranks)
PipelineCut = Callable[[nn.Module], "tuple[list[nn.Module], set[int]]"]


def parallelize(module: nn.Module, topo: Topology | None, *,
                pipeline: PipelineCut | None = None,
                tp_overrides: Mapping[str, str] | None = None,
                activation_checkpointing: bool = False,
                replicate: Callable[[nn.Module], nn.Module] | None = None) -> list[nn.Module]:
    """This rank's parts of `module` with pipeline, tensor, checkpointing and data
    parallelism applied in the order of the module docstring.

    Args:
        module: the single-device model, already on this rank's device.
        topo: this rank's mesh (bigtrain.parallel.dims.Topology); None: every rank holds
            the whole model (no tensor split) and `replicate` does step 4.
        pipeline: step 1, or None for no pipeline (the whole module is the one part).
        tp_overrides: regex -> style overrides of the tensor-parallel plan (step 2).
        activation_checkpointing: step 3 on or off.
        replicate: step 4 as a wrapper that starts the replicas equal and syncs their
            gradients itself (DDP, FSDP2); None: the broadcast over "dp" and `sync_grads`.

    Returns:
        The parts this rank computes: its pipeline stages, or `[module]`.
    """
    parts, tied = pipeline(module) if pipeline is not None else ([module], set())
    if topo is not None and topo.dims.tp > 1:
        for part in parts:
            apply_tp(part, topo.sub_mesh("tp"), part_plan(part, topo.dims.tp, tp_overrides,
                                                           tied))
    if activation_checkpointing:
        for part in parts:
            checkpoint_blocks(part)
    if replicate is not None:
        return [replicate(part) for part in parts]
    if topo is not None and topo.mesh is not None:
        broadcast_params(unique_params(parts), topo.group("dp"))  # replicas start equal
    return parts


def part_plan(part: nn.Module, degree: int, overrides: Mapping[str, str] | None,
              tied: set[int]) -> dict[str, str]:
    """The tensor-parallel plan of one part; Linears whose weight is in `tied` (shared with
    another pipeline rank's copy) stay replicated."""
    check_tp(part, degree)
    plan = tp_plan(part, degree, overrides)
    for name in plan:  # (layers that split themselves, e.g. Conv2D, keep weights deeper)
        if id(getattr(part.get_submodule(name), "weight", None)) in tied:
            plan[name] = "replicate"
    return plan


def sync_grads(params: Iterable[nn.Parameter], topo: Topology) -> None:
    """Step 4 after backward: average gradients over the data-parallel replicas (all-reduce
    of flat buckets over "dp"; nothing on one replica)."""
    if topo.mesh is not None:
        all_reduce_grads(params, topo.group("dp"))


def unique_params(parts: Sequence[nn.Module]) -> list[nn.Parameter]:
    """Every parameter of `parts` once (a weight shared by two parts counts once)."""
    seen, out = set(), []
    for m in parts:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def checkpoint_blocks(module: nn.Module) -> list[str]:
    """Recompute activations in backward for each block of `module`, in place.

    Blocks are what the module declares with a `checkpoint_targets()` method (a pipeline
    stage: each of its layers with parameters), else the members of a `blocks` ModuleList
    (GPT-like models), else the children with parameters of an `nn.Sequential`. The block's
    `forward` is wrapped with torch.utils.checkpoint (non-reentrant), so state-dict names do
    not change.

    Returns:
        The names of the wrapped blocks.
    """
    declared = getattr(module, "checkpoint_targets", None)
    if declared is not None:
        targets = declared()
    elif isinstance(getattr(module, "blocks", None), nn.ModuleList):
        targets = [(f"blocks.{i}", b) for i, b in enumerate(module.blocks)]
    elif isinstance(module, nn.Sequential):
        targets = [(n, m) for n, m in module.named_children()
                   if next(m.parameters(), None) is not None]
    else:
        targets = []
    for _, block in targets:
        wrap_forward_with_checkpoint(block)
    return [n for n, _ in targets]


def wrap_forward_with_checkpoint(block: nn.Module) -> None:
    """Make `block(x)` run under torch.utils.checkpoint (idempotent)."""
    from torch.utils.checkpoint import checkpoint
    if getattr(block, "_bigtrain_checkpointed", False):
        return
    inner = block.forward

    def forward(*args, **kwargs):
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward
    block._bigtrain_checkpointed = True
