"""What a `Pipeline` refuses before any rank starts (bigtrain.parallel.pipeline): a number of
micro-batches its schedule cannot run or that does not divide a replica's batch, and a model
whose layer chain cannot be cut into its stages.

Plain functions of the options and the model, with no process group, so the process that
calls fit raises the same error every rank would, naming the option to change.

Example:
    schedule_problem("1f1b", 2, pp=4)      # "... needs at least 4 micro-batches ..."
    layers = check_chain(model, pp=2, stages_per_rank=1, split=None)
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from bigtrain.parallel.pipeline_partition import (block_count, chain_layers, refuse_off_chain,
                                                  shared_buffer)
from bigtrain.parallel.pipeline_runtime import MULTI_STAGE


def schedule_problem(schedule: str, m: int, pp: int) -> str | None:
    """Why `schedule` cannot run `m` micro-batches on `pp` pipeline ranks (None: it can).
    1f1b keeps one micro-batch in flight per stage, so it needs m >= pp; the multi-stage
    schedules run m in rounds of pp, so m must be a multiple of its round count."""
    if schedule == "1f1b" and m < pp:
        return (f"schedule '1f1b' on {pp} pipeline ranks needs at least {pp} micro-batches "
                f"per step, got microbatches={m}; use microbatches={pp} (or a larger "
                "value dividing each replica's batch), or schedule='gpipe'")
    if schedule in MULTI_STAGE:
        rounds = max(1, m // pp)
        if m % rounds:
            return (f"schedule {schedule!r} on {pp} pipeline ranks needs microbatches "
                    f"to be a multiple of {rounds}; use microbatches="
                    f"{rounds * (m // rounds)} or a multiple of {pp}")
    return None


def check_microbatches(schedule: str, m: int, pp: int, per_replica: int) -> None:
    """Refuse `m` micro-batches that `schedule` cannot run on `pp` ranks, or that do not
    divide the `per_replica` samples of each step, naming batch sizes and micro-batch
    counts that fit."""
    problem = schedule_problem(schedule, m, pp)
    if problem is not None:
        raise ValueError(problem)
    if per_replica % m:
        lo = per_replica - per_replica % m
        divisors = [d for d in range(1, per_replica + 1) if per_replica % d == 0]
        fits = [d for d in divisors if schedule_problem(schedule, d, pp) is None]
        raise ValueError(
            f"microbatches={m} does not divide the batch of {per_replica} samples per "
            f"pipeline replica; use a batch size of "
            + (f"{lo} or {lo + m}" if lo else f"{m}") + " (per replica)"
            + (f", or microbatches among {fits}" if fits else "")
            + (f" (schedule {schedule!r} on {pp} pipeline ranks)" if fits != divisors else ""))


def check_chain(module: nn.Module, pp: int, stages_per_rank: int,
                split: Sequence[int] | None) -> list[tuple[str, nn.Module]]:
    """The layer chain of `module`, or ValueError if it cannot form `pp` * `stages_per_rank`
    stages (of `split` layers each, where given)."""
    layers = chain_layers(module)
    refuse_off_chain(module, layers)  # weights the stages would never run
    shared = shared_buffer(layers)
    if shared is not None:  # tied weights are summed across ranks; buffers cannot be
        raise ValueError(
            f"layers {shared[0]!r} and {shared[1]!r} of the pipeline's chain are one "
            "module (or share a submodule) holding buffers (e.g. BatchNorm's running "
            "statistics); pipeline stages on different ranks would each update their own "
            "copy. Give each position its own module, or use a data-parallel strategy "
            "(ddp, zero1/2/3, fsdp_offload) for this model")
    masking = [n for n, layer in layers if any(getattr(m, "makes_mask", False)
                                               for m in layer.modules())]
    if masking:  # the mask rides on the tensor, and stages exchange plain tensors
        raise ValueError(f"layer {masking[0]!r} makes a time-step mask (Embedding("
                         "mask_zero=True) or Masking), which cannot cross a pipeline stage "
                         "boundary; use a data-parallel strategy (ddp, zero1/2/3, "
                         "fsdp_offload) for this model, or pad sequences in front and drop "
                         "the mask")
    n_stages = pp * stages_per_rank
    blocks = block_count(layers)
    if n_stages > len(layers) or (blocks < len(layers) and n_stages > blocks):
        one_stage = ", schedule='1f1b' or 'gpipe' (one stage per rank)" \
            if stages_per_rank > 1 and pp <= blocks else ""
        raise ValueError(
            f"{n_stages} pipeline stages ({pp} ranks x {stages_per_rank} per rank) "
            f"but the model has only {blocks} blocks ({len(layers)} cut-able layers); use "
            f"at most {blocks // stages_per_rank or 1} pipeline ranks{one_stage} "
            "or a deeper model")
    if split is not None:
        if len(split) != n_stages or sum(split) != len(layers) or min(split) < 1:
            raise ValueError(
                f"split={list(split)} must list {n_stages} positive layer counts summing "
                f"to {len(layers)} (the cut-able layers: {[n for n, _ in layers]})")
    return layers
