"""Step-time model: compute + communication + pipeline bubble (+ host offload traffic).

    time = FLOPs per rank / device FLOP/s                      (compute; or, with a
                                                                kernel probe, the traced
                                                                step's kernels as timed)
         + bytes each rank moves / link bandwidth              (communication, not overlapped)
         + collectives per step * latency                      (fixed cost per message)
         + compute * bubble / (1 - bubble)                     (pipeline idle time)
         + optimizer bytes touched / memory bandwidth          (the update, memory-bound)
         + buffer bytes copied x 2 / memory bandwidth          (CPU ranks: DDP's buckets,
                                                                FSDP2's gather/scatter copies)

On CPU ranks the rank's own core runs gloo's collectives (copies, the reduction's arithmetic,
the loopback sockets) and its buffer copies, so none of it overlaps compute; with measured
collective costs (DeviceSpec.collectives, bigtrain.plan.collectives) each kind runs at its
own measured bytes/s (`comm_parts`), and ZeRO-2/3 pay the measured seconds per FSDP2 unit
(hooks, copy-in/out, small collectives) instead of a latency per collective. Optimizers
over DTensors (UNFUSED_UPDATE) run torch's per-tensor loop, not the fused kernel: with the
kernel probe, their update is priced at that loop's measured bytes/s.

The optimizer update reads every local parameter, gradient and state element and writes the
parameter and state back: (2 (P + K) + G) bytes per parameter the rank updates (fp32 Adam:
28). At a few FLOPs per byte it runs at memory speed, not matmul speed; on one CPU core it is
about a third of a 100M-parameter MLP's step at batch 64 (bench/bench_scaling.py).

With a kernel probe (DeviceSpec.kernels, bigtrain.plan.kernels) the compute term is the
rank's own forward + loss + backward at its local batch, every kernel timed at the shapes the
model runs: a rank of a data-parallel strategy runs its share of the batch, tensor ranks 1/n
of the calls of each micro-batch, a pipeline rank its heaviest stage's share of them
(bigtrain.plan.stages.stage_work_share: the stage whose states the plan counts)
(`traced_compute`).

Training FLOPs are 3 x forward (backward costs about twice the forward): the forward is
counted from the module (FlopCounterMode), or approximated as 2 * N per token, giving the
familiar 6 * N * tokens for transformers and 6 * N * samples for MLPs.

Communication volume per rank and step (Psi parameters, P/G bytes per param/grad, n ranks):
    ddp           ring all-reduce of gradients            2 (n-1)/n * G Psi
    zero1         all-reduce grads + all-gather params    2 (n-1)/n * G Psi + (n-1)/n * P Psi
    zero2         reduce-scatter grads + all-gather params (n-1)/n * (G + P) Psi
    zero3         all-gather params twice (fwd, bwd) + reduce-scatter grads
                                                           (n-1)/n * (2P + G) Psi
    pipeline      point-to-point: activations forward, their gradients backward, per sample
    tensor        all-reduce of row-parallel outputs in forward and of input gradients in
                  backward: 2 * 2 (n-1)/n * (half the linear-output bytes)
    ps            n-1 workers push gradients and pull parameters through one server link

Example:
    >>> ring_allreduce_bytes(100, 4)
    150.0
    >>> round(pipeline_bubble(stages=4, microbatches=8), 3)
    0.273
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from bigtrain.plan.memory import Precision, data_parallel_degree
from bigtrain.plan.profile import ModelProfile
from bigtrain.plan.stages import stage_work_share


def ring_allreduce_bytes(nbytes: float, n: int) -> float:
    """Bytes each rank sends in a ring all-reduce of `nbytes`: 2 (n-1)/n * nbytes."""
    return 2.0 * (n - 1) / n * nbytes if n > 1 else 0.0


def reduce_scatter_bytes(nbytes: float, n: int) -> float:
    """Bytes each rank sends in a ring reduce-scatter (or all-gather): (n-1)/n * nbytes."""
    return (n - 1) / n * nbytes if n > 1 else 0.0


def pipeline_bubble(stages: int, microbatches: int) -> float:
    """Idle fraction of a GPipe/1F1B schedule: (p - 1) / (m + p - 1)."""
    if stages < 1 or microbatches < 1:
        raise ValueError(f"stages and microbatches must be >= 1, got {stages}, {microbatches}")
    return (stages - 1) / (microbatches + stages - 1)


def training_flops(profile: ModelProfile, batch_size: int) -> float:
    """FLOPs of one optimizer step over `batch_size` samples (forward + backward)."""
    fwd = profile.forward_flops_per_sample
    if fwd is None:
        fwd = 2.0 * profile.n_params * profile.tokens_per_sample
    return 3.0 * fwd * batch_size


@dataclass(frozen=True)
class StepTime:
    """Estimated seconds of one optimizer step on the slowest rank.

    Attributes:
        compute: FLOPs / device throughput.
        comm: collective or point-to-point traffic / bandwidth plus latency per collective
            (assumed not overlapped with compute).
        bubble: pipeline idle seconds.
        offload: device <-> host copies of offloaded state.
        update: the optimizer update of this rank's share (memory-bound).
        bubble_fraction: (p-1)/(m+p-1) for pipelines, else 0.
        copies: a CPU rank's copies between its tensors and its collectives' buffers
            (`host_copy_bytes`), and a pipeline stage's gradient accumulation over its
            micro-batches, done by the rank's own core.
    """
    compute: float
    comm: float = 0.0
    bubble: float = 0.0
    offload: float = 0.0
    bubble_fraction: float = 0.0
    update: float = 0.0
    copies: float = 0.0

    @property
    def total(self) -> float:
        return self.compute + self.comm + self.bubble + self.offload + self.update + \
            self.copies


def comm_parts(strategy: str, profile: ModelProfile, prec: Precision, *, world_size: int,
               batch_size: int, act_per_sample: float = 0.0) -> dict[str, float]:
    """Bytes the busiest rank (or link) sends per optimizer step for `strategy`, by kind of
    collective: "all_reduce", "all_gather", "reduce_scatter", or "p2p" (pipeline sends,
    parameter-server pushes and pulls). Gloo runs each kind at its own speed on CPU ranks
    (bigtrain.plan.collectives).

    Args:
        strategy: strategy name.
        profile: the model's sizes.
        prec: training precision.
        world_size: ranks.
        batch_size: global batch.
        act_per_sample: saved activation bytes of one sample (tensor parallel traffic).
    """
    n, psi = world_size, float(profile.n_params)
    grads, params = prec.grad_bytes * psi, prec.param_bytes * psi
    if n == 1 or strategy == "single":
        return {}
    if strategy == "ddp":
        return {"all_reduce": ring_allreduce_bytes(grads, n)}
    if strategy == "zero1":
        return {"all_reduce": ring_allreduce_bytes(grads, n),
                "all_gather": reduce_scatter_bytes(params, n)}
    if strategy == "zero2":
        return {"reduce_scatter": reduce_scatter_bytes(grads, n),
                "all_gather": reduce_scatter_bytes(params, n)}
    if strategy in ("zero3", "fsdp_offload"):  # gathered for forward and again for backward
        return {"reduce_scatter": reduce_scatter_bytes(grads, n),
                "all_gather": reduce_scatter_bytes(2 * params, n)}
    if strategy == "pipeline":
        boundary = (profile.boundary_elems_per_sample or 0.0) * prec.activation_bytes
        return {"p2p": 2.0 * boundary * batch_size}  # activations forward + gradients back
    if strategy == "tensor":
        row_parallel_out = 0.5 * profile.linear_share * act_per_sample * batch_size
        return {"all_reduce": 2.0 * ring_allreduce_bytes(row_parallel_out, n)}
    if strategy == "ps":  # every worker's push + pull crosses the server link
        return {"p2p": (n - 1) * (grads + params)}
    raise ValueError(f"unknown strategy {strategy!r}")


def comm_bytes(strategy: str, profile: ModelProfile, prec: Precision, *, world_size: int,
               batch_size: int, act_per_sample: float = 0.0) -> float:
    """Bytes the busiest rank (or link) moves per optimizer step for `strategy`: the sum of
    `comm_parts` (same arguments)."""
    return sum(comm_parts(strategy, profile, prec, world_size=world_size,
                          batch_size=batch_size, act_per_sample=act_per_sample).values())


#: strategies whose optimizer holds DTensors, so torch's fused kernel cannot run and the
#: update is a per-tensor loop (bigtrain.api.optimizer_kernels)
UNFUSED_UPDATE = ("zero2", "zero3", "fsdp_offload", "tensor")


def host_copy_bytes(strategy: str, profile: ModelProfile, prec: Precision, *,
                    world_size: int) -> float:
    """Bytes a rank copies per step between its tensors and its collectives' buffers:
    DDP (and ZeRO-1, whose gradients go through DDP) copies each gradient into its bucket
    and the reduced bucket back; FSDP2 copies the gathered parameters out of the all-gather
    buffer (twice for zero3: forward and backward) and the unsharded gradients into the
    reduce-scatter's. On CPU ranks the rank's own core does these copies.

    Example:
        >>> from bigtrain.plan.memory import PRECISIONS
        >>> host_copy_bytes("zero3", ModelProfile(n_params=100), PRECISIONS["32"],
        ...                 world_size=2)
        1200.0
    """
    if world_size == 1 or strategy not in ("ddp", "zero1", "zero2", "zero3"):
        return 0.0
    psi = float(profile.n_params)
    gathers = {"ddp": 0, "zero1": 0, "zero2": 1, "zero3": 2}[strategy]
    bucket_passes = 2 if strategy in ("ddp", "zero1") else 1
    return (bucket_passes * prec.grad_bytes + gathers * prec.param_bytes) * psi


def update_bytes(strategy: str, n_params: float, prec: Precision, optimizer_bytes: float, *,
                 world_size: int) -> float:
    """Bytes the busiest rank streams through memory in one optimizer update.

    Each updated parameter costs 2 (P + K) + G bytes (read parameter, state and gradient,
    write parameter and state). ddp and single update everything; sharded optimizers
    (zero1/2/3, pipeline stages, tensor shards) a 1/n share; "ps": the server updates every
    parameter once per step (the worker waits for it under BSP); fsdp_offload updates on
    the host.

    Example:
        >>> from bigtrain.plan.memory import PRECISIONS
        >>> update_bytes("ddp", 1e6, PRECISIONS["32"], 8, world_size=2)
        28000000.0
    """
    per_param = 2 * (prec.param_bytes + optimizer_bytes) + prec.grad_bytes
    share = 1.0 if strategy in ("single", "ddp", "ps") else 1.0 / world_size
    return per_param * float(n_params) * share


def traced_compute(strategy: str, seconds: Callable[[int], float | None], *,
                   world_size: int, batch_size: int, microbatches: int,
                   share: float | None = None) -> float | None:
    """Compute seconds of the busiest rank from `seconds(b)`, one forward + backward of `b`
    samples of the whole model on one rank; None when `seconds` gives None.

    Data-parallel ranks (ddp, zero*, ps) run `microbatches` passes of their share of the
    batch; pipeline stages and tensor shards run 1/n of the work of every micro-batch
    (an even cut: the calls of each micro-batch divided over the ranks), or `share` of it
    (the heaviest pipeline stage's, `bigtrain.plan.stages.stage_work_share`).

    Example:
        >>> traced_compute("ddp", lambda b: 0.001 * b, world_size=2, batch_size=64,
        ...                microbatches=1)
        0.032
    """
    m = microbatches
    if strategy in ("pipeline", "tensor"):
        per = seconds(max(1, math.ceil(batch_size / m)))
        return None if per is None else m * per * (share or 1.0 / world_size)
    dp = data_parallel_degree(strategy, world_size)
    per = seconds(max(1, math.ceil(batch_size / dp / m)))
    return None if per is None else m * per


BUCKET_BYTES = 25 * 2 ** 20  # DDP's default gradient bucket size


def collectives_per_step(strategy: str, profile: ModelProfile, prec: Precision, *,
                         world_size: int, microbatches: int) -> int:
    """How many collectives / messages the busiest rank waits on per step (latency term).

    DDP: one all-reduce per 25 MB bucket; ZeRO-2/3: a gather and/or reduce-scatter per
    parameterised unit; tensor: two all-reduces per linear pair per micro-batch; pipeline:
    a send and a receive per micro-batch each way; ps: a push and a pull per worker.
    """
    if world_size == 1 or strategy == "single":
        return 0
    units = profile.n_units or 1
    buckets = max(1, math.ceil(prec.grad_bytes * profile.n_params / BUCKET_BYTES))
    counts = {"ddp": buckets, "zero1": buckets + 1, "zero2": 2 * units,
              "zero3": 3 * units, "fsdp_offload": 3 * units,
              "tensor": 2 * max(1, (profile.n_linear or 2) // 2) * microbatches,
              "pipeline": 4 * microbatches, "ps": 2 * (world_size - 1)}
    return counts[strategy]


def comm_seconds(strategy: str, profile: ModelProfile, prec: Precision, *, world_size: int,
                 batch_size: int, microbatches: int, bandwidth: float, latency: float,
                 act_per_sample: float = 0.0, collectives=None) -> float:
    """Seconds the busiest rank spends in its collectives per step, not overlapped.

    Without measured `collectives` (bigtrain.plan.collectives.CollectiveCosts): every byte
    at `bandwidth`, `latency` per collective. With them (CPU ranks of this host): each kind
    at its measured bytes/s, and ZeRO-2/3 pay the measured seconds per FSDP2 unit (its hooks,
    copies and small collectives) instead of a latency per collective.
    """
    parts = comm_parts(strategy, profile, prec, world_size=world_size, batch_size=batch_size,
                       act_per_sample=act_per_sample)
    count = collectives_per_step(strategy, profile, prec, world_size=world_size,
                                 microbatches=microbatches)
    if collectives is None:
        return sum(parts.values()) / bandwidth + latency * count
    seconds = sum(b / collectives.rate(kind, bandwidth) for kind, b in parts.items())
    per_unit = {"zero2": collectives.unit_zero2, "zero3": collectives.unit_zero3}
    if strategy in per_unit:
        return seconds + per_unit[strategy] * (profile.n_units or 1)
    return seconds + collectives.latency * count


def copy_seconds(strategy: str, profile: ModelProfile, prec: Precision, *, world_size: int,
                 microbatches: int, share: float | None, copy_bandwidth: float) -> float:
    """Seconds a CPU rank's core spends copying per step: `host_copy_bytes` (each byte read
    and written once), and for a pipeline stage running `share` of the model, autograd
    adding each later micro-batch's gradient to the kept one (read both, write one)."""
    seconds = 2.0 * host_copy_bytes(strategy, profile, prec,
                                    world_size=world_size) / copy_bandwidth
    if share is not None:
        stage_grads = prec.grad_bytes * float(profile.n_params) * share
        seconds += 3.0 * (microbatches - 1) * stage_grads / copy_bandwidth
    return seconds


def step_time(strategy: str, profile: ModelProfile, prec: Precision, *, world_size: int,
              batch_size: int, microbatches: int, flops: float, bandwidth: float,
              host_bandwidth: float, offload_moves: bool,
              act_per_sample: float = 0.0, latency: float = 0.0,
              memory_bandwidth: float | None = None, optimizer_bytes: float = 0.0,
              local_seconds: Callable[[int], float | None] | None = None,
              collectives=None, copy_bandwidth: float | None = None,
              unfused_bandwidth: float | None = None) -> StepTime:
    """Estimate one step's seconds for `strategy`.

    Args:
        strategy: strategy name.
        profile: the model's sizes.
        prec: training precision.
        world_size: ranks.
        batch_size: global batch.
        microbatches: micro-batches per step (pipeline schedule length).
        flops: one rank's FLOP/s.
        bandwidth: one rank's link bytes/s.
        host_bandwidth: device <-> host bytes/s (offload).
        offload_moves: False when the device is the host CPU (offload copies nothing).
        act_per_sample: saved activation bytes of one sample.
        latency: seconds per collective.
        memory_bandwidth: the rank's memory bytes/s in its (fused) update (None: the update
            is not counted).
        optimizer_bytes: K, optimizer bytes per parameter (incl. master weights).
        local_seconds: seconds of one forward + backward of b samples on one rank, from a
            kernel probe (None: compute is FLOPs / `flops`).
        collectives: measured gloo costs of this host's ranks (`comm_seconds`), or None.
        copy_bandwidth: bytes/s (read + write) of a CPU rank's buffer copies
            (`host_copy_bytes`) and a pipeline stage's gradient accumulation; None: not
            counted (an accelerator's copies are on it).
        unfused_bandwidth: the update's bytes/s where the optimizer holds DTensors
            (UNFUSED_UPDATE: a per-tensor loop); None: `memory_bandwidth`.
    """
    total = training_flops(profile, batch_size)
    dp = data_parallel_degree(strategy, world_size)
    split = world_size if strategy in ("pipeline", "tensor") else dp
    # the heaviest pipeline stage runs its layers' share of every micro-batch
    share = stage_work_share(profile.chain, world_size) if strategy == "pipeline" else None
    compute = total * (share or 1.0 / split) / flops
    if local_seconds is not None:
        traced = traced_compute(strategy, local_seconds, world_size=world_size,
                                batch_size=batch_size, microbatches=microbatches,
                                share=share)
        compute = compute if traced is None else traced
    comm = comm_seconds(strategy, profile, prec, world_size=world_size, batch_size=batch_size,
                        microbatches=microbatches, bandwidth=bandwidth, latency=latency,
                        act_per_sample=act_per_sample, collectives=collectives)
    bubble_fraction = pipeline_bubble(world_size, microbatches) if strategy == "pipeline" else 0.0
    bubble = compute * bubble_fraction / (1.0 - bubble_fraction)
    offload = 0.0
    if strategy == "fsdp_offload" and offload_moves:
        # each step: parameter shard host -> device, gradient shard device -> host
        shard = float(profile.n_params) / world_size
        offload = (prec.param_bytes + prec.grad_bytes) * shard / host_bandwidth
    update = 0.0
    if strategy in UNFUSED_UPDATE and unfused_bandwidth:
        memory_bandwidth = unfused_bandwidth
    if memory_bandwidth and strategy != "fsdp_offload":
        update = update_bytes(strategy, profile.n_params, prec, optimizer_bytes,
                              world_size=world_size) / memory_bandwidth
        if share is not None:  # the heaviest stage updates its own layers
            update *= share * world_size
    copies = copy_seconds(strategy, profile, prec, world_size=world_size,
                          microbatches=microbatches, share=share,
                          copy_bandwidth=copy_bandwidth) if copy_bandwidth else 0.0
    return StepTime(compute=compute, comm=comm, bubble=bubble, offload=offload,
                    bubble_fraction=bubble_fraction, update=update, copies=copies)
