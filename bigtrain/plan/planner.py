"""The planner: per-rank memory and step time of every strategy that can run, ranked.

Example:
    from torch import nn
    from bigtrain.plan import plan
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    p = plan(model, devices=2, batch_size=64)
    print(p.best.strategy, p.best.reason)
    print(p.table(markdown=True))

    # a model by parameter count, on 64 GPUs
    from bigtrain.plan import DeviceSpec
    p = plan(7.5e9, devices=64, batch_size=1024, seq_len=1024, precision="bf16-mixed",
             device=DeviceSpec.preset("a100-80gb"))
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from torch import nn

from bigtrain.plan.bf16 import SLOW_BF16_FACTOR, probe_bf16
from bigtrain.plan.cost import StepTime, step_time
from bigtrain.plan.device import (DeviceSpec, host_memory_bytes, rank_specs, slowest,
                                  step_rates)
from bigtrain.plan.kernels import step_timer
from bigtrain.plan.memory import (STRATEGIES, MemoryBreakdown, activation_bytes,
                                  data_parallel_degree, get_precision, model_state_bytes,
                                  optimizer_bytes, ps_server_bytes)
from bigtrain.plan.profile import ModelProfile, example_sample, profile_module
from bigtrain.plan.report import format_bytes, plan_table, reason_for
from bigtrain.plan.stages import pipeline_note, pipeline_states
from bigtrain.plan.tensor_share import per_rank_params, split_params, splittable_params


@dataclass(frozen=True)
class StrategyEstimate:
    """One strategy's predicted cost on one rank.

    Attributes:
        strategy: registry name ("ddp", "zero3", ...).
        memory: bytes on the heaviest rank.
        time: estimated seconds per optimizer step.
        fits: whether memory.device_total fits the usable device memory.
        microbatches: micro-batches per step assumed for this strategy.
        reason: one sentence on why it ranks where it does (filled by `plan`).
    """
    strategy: str
    memory: MemoryBreakdown
    time: StepTime
    fits: bool
    microbatches: int = 1
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    """Ranked estimates: fitting strategies first, then by estimated step time.

    Attributes:
        estimates: ranked list of StrategyEstimate.
        skipped: strategy name -> why it cannot run with these settings.
        device: the per-rank device the estimates assume.
        usable_memory: device bytes a rank may fill (memory minus the reserve).
        host_memory: host bytes a rank may fill with offloaded state.
        profile: the model figures used.
        notes: how figures were obtained and what was left out.
    """
    estimates: list[StrategyEstimate]
    skipped: dict[str, str]
    device: DeviceSpec
    usable_memory: float
    host_memory: float
    profile: ModelProfile
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> StrategyEstimate | None:
        """The fastest strategy that fits, or None when none fits."""
        return next((e for e in self.estimates if e.fits), None)

    def get(self, strategy: str) -> StrategyEstimate:
        """The estimate for `strategy` (KeyError naming the skipped reason otherwise)."""
        for e in self.estimates:
            if e.strategy == strategy:
                return e
        raise KeyError(f"{strategy!r} was not estimated: "
                       f"{self.skipped.get(strategy, 'unknown strategy')}")

    def table(self, markdown: bool = False):
        """A rich Table (default) or a Markdown string of the ranked estimates."""
        return plan_table(self, markdown=markdown)


def _skip_reason(strategy: str, devices: int, batch_size: int, kind: str) -> str | None:
    """Why `strategy` cannot run here, or None when it can."""
    if strategy == "single":
        return None if devices == 1 else f"uses 1 rank, {devices} requested"
    if strategy == "fsdp_offload" and kind == "cpu":
        return "the device is the host CPU: offloading to host memory frees nothing"
    if devices == 1:
        return None if strategy == "fsdp_offload" else "needs at least 2 ranks"
    workers = devices - 1 if strategy == "ps" else devices
    if strategy not in ("pipeline", "tensor") and batch_size < workers:
        return f"global batch {batch_size} < {workers} data-parallel ranks; raise batch_size"
    return None


def _comm_buffers(strategy: str, prof: ModelProfile, prec, micro: int) -> float:
    """Device bytes the collectives need beyond model states (see module notes)."""
    psi, unit = float(prof.n_params), float(prof.largest_unit_params or 0)
    if strategy in ("ddp", "zero1"):
        return prec.grad_bytes * psi  # DDP's flat gradient buckets (a second gradient copy)
    if strategy == "zero2":
        # every unit's gathered parameters live from forward to backward (FSDP2 with
        # reshard_after_forward=False), plus one unit's unsharded gradient
        return prec.param_bytes * psi + prec.grad_bytes * unit
    if strategy in ("zero3", "fsdp_offload"):
        # FSDP2 at its peak, in the biggest unit's backward: its gathered parameters and
        # unsharded gradient, and the next unit's parameters gathered ahead (prefetch)
        ahead = unit if prof.second_unit_params is None else float(prof.second_unit_params)
        return unit * (prec.param_bytes + prec.grad_bytes) + ahead * prec.param_bytes
    if strategy == "pipeline":
        boundary = (prof.boundary_elems_per_sample or 0.0) * prec.activation_bytes
        return 2 * boundary * micro  # send + receive buffers of one micro-batch
    return 0.0


def _memory(strategy: str, prof: ModelProfile, *, devices: int, precision: str,
            optimizer, act_per_sample: float, batch_size: int, microbatches: int,
            schedule: str, tensor_split: float | None = None) -> MemoryBreakdown:
    """Full per-rank breakdown (the heavier role for the parameter server).
    `tensor_split`: parameters tensor parallelism splits (None: every one)."""
    prec = get_precision(precision)
    states = model_state_bytes(strategy, prof.n_params, world_size=devices,
                               precision=precision, optimizer=optimizer,
                               largest_param=prof.largest_unit_params or 0)
    if strategy == "tensor" and tensor_split is not None:  # the rest is replicated
        states = model_state_bytes("single", per_rank_params(prof.n_params, tensor_split,
                                                             devices),
                                   world_size=1, precision=precision, optimizer=optimizer)
    acts = activation_bytes(strategy, act_per_sample, world_size=devices,
                            batch_size=batch_size, microbatches=microbatches,
                            schedule=schedule, linear_share=prof.linear_share)
    local = math.ceil(batch_size / data_parallel_degree(strategy, devices))
    buffers = _comm_buffers(strategy, prof, prec, math.ceil(local / microbatches))
    if strategy == "pipeline":  # the heaviest stage of the runtime's cut
        p, g, o, accumulation = pipeline_states(
            prof.chain, prof.n_params, stages=devices, param_bytes=prec.param_bytes,
            grad_bytes=prec.grad_bytes, optimizer_bytes=optimizer_bytes(optimizer, precision),
            microbatches=microbatches)
        states = replace(states, params=p, grads=g, optimizer=o)
        buffers += accumulation
    mem = MemoryBreakdown(states.params, states.grads, states.optimizer, acts, buffers,
                          states.offloaded_host, states.role)
    if strategy == "ps":
        server = ps_server_bytes(prof.n_params, precision=precision, optimizer=optimizer)
        if server.device_total > mem.device_total:
            return server
    return mem


#: micro-batches of the registered "pipeline" strategy (bigtrain.parallel.pipeline's
#: Pipeline(microbatches=4)): what strategy="auto" runs when it picks "pipeline"
PIPELINE_MICROBATCHES = 4


def pipeline_microbatches(batch_size: int, stages: int) -> int:
    """Micro-batches the planner assumes for "pipeline": the registered strategy's 4 (1F1B
    needs one per stage at least, so more on longer pipelines), at most one per sample."""
    return min(batch_size, max(PIPELINE_MICROBATCHES, stages))


#: Speeds further apart than this make the planner also estimate the speed-aware split.
UNEVEN_SPEED = 1.05
#: Strategies whose work a speed-aware split (or partition) spreads by measured speed.
SPEED_AWARE = {"ddp_balanced": "ddp"}


def _tensor_split(model, devices: int, styles: Mapping[str, str] | None,
                  notes: list[str]) -> tuple[float | None, str | None]:
    """(parameters tensor parallelism splits, why it cannot run) for an nn.Module on
    `devices` ranks; (None, None) when only a parameter count is known (every one split)."""
    if not isinstance(model, nn.Module) or devices < 2:
        return None, None
    if styles is not None:
        split = split_params(model, styles)
    else:
        split = splittable_params(model, devices)
        if split:
            notes.append("tensor: counts every Linear with a width divisible by the ranks as "
                         "split, the most that can split (its memory may be higher); pass "
                         "tensor_styles=bigtrain.parallel.tensor_plan.tp_plan(model, devices) "
                         "for the runtime's own plan")
    if split == 0:
        return 0.0, (f"no layer splits over {devices} ranks (no Linear pair whose widths "
                     f"divide by {devices}, nor a layer that splits itself): every rank would "
                     "hold and compute the whole model; use a data-parallel strategy")
    return float(split), None


def _profile(model, seq_len, example_input) -> ModelProfile:
    if isinstance(model, nn.Module):
        return profile_module(model, seq_len=seq_len, example_input=example_input)
    if isinstance(model, ModelProfile):
        return model
    return ModelProfile(n_params=int(model), tokens_per_sample=seq_len or 1)


def _kernel_timer(model, spec: DeviceSpec, precision: str, seq_len, example_input,
                  notes: list[str]):
    """seconds(b, rate) of the model's step on a rank at `rate` FLOP/s, from the spec's
    kernel probe; None where the probe does not apply (see bigtrain.plan.kernels.step_timer)."""
    if spec.kernels is None or spec.kind != "cpu" or not isinstance(model, nn.Module):
        return None
    if precision != "32":
        notes.append(f"step time: FLOPs / FLOP/s; the kernel probe times fp32 kernels, not "
                     f"{precision}'s")
        return None
    return step_timer(spec.kernels, model, example_sample(model, seq_len, example_input), notes)


def _activation_per_sample(prof: ModelProfile, prec, override: float | None,
                           notes: list[str]) -> float:
    """Saved activation bytes of one sample: the override, the measured figure, or 0."""
    if override is not None:
        notes.append(f"activations: {format_bytes(override)} per sample as given")
        return float(override)
    if prof.activation_elems_per_sample is not None:
        return prof.activation_elems_per_sample * prec.activation_bytes
    notes.append("activations unknown (pass a module or activation_bytes_per_sample): "
                 "not counted in memory, and the pipeline/tensor communication that "
                 "scales with them is missing, so those two times are optimistic")
    return 0.0


def _bf16_factor(precision: str, kind: str, this_host: bool, given: float | None,
                 notes: list[str]) -> float:
    """How many times slower bf16 compute is than the device's fp32 figure (1.0 unless bf16
    on a CPU without native bf16); notes why when it is not 1."""
    if precision != "bf16-mixed" or kind != "cpu":
        return 1.0
    if given is None:
        if not this_host:
            return 1.0
        probe = probe_bf16()
        given = probe.slowdown if probe.slow else 1.0
    if given <= SLOW_BF16_FACTOR:
        return 1.0
    notes.append(f"slow_bf16: a bf16 matmul takes {given:.1f}x as long as fp32 on this CPU (no "
                 "native AVX-512 BF16 / AMX); compute times are scaled by it: use "
                 "precision='32' here")
    return given


def _rank_specs(device, devices: int, overrides: tuple, precision: str,
                bf16_slowdown: float | None, notes: list[str]) -> list[DeviceSpec]:
    """Each rank's DeviceSpec with the overrides, its FLOP/s divided by a slow bf16 factor;
    notes say when bf16 is slow or the ranks differ in speed."""
    specs = rank_specs(device, devices, overrides)
    kind = slowest(specs).kind
    slow_bf16 = _bf16_factor(precision, kind, device is None, bf16_slowdown, notes)
    if slow_bf16 > 1.0:  # every rank computes bf16 that many times slower than fp32
        specs = [s.with_overrides(flops=s.flops / slow_bf16) for s in specs]
    speeds = [s.flops for s in specs]
    if max(speeds) > UNEVEN_SPEED * min(speeds):
        notes.append(f"ranks differ in speed ({min(speeds):.3g}..{max(speeds):.3g} FLOP/s): "
                     "evenly split strategies run at the slowest rank's speed; ddp_balanced "
                     "splits each batch by speed; pipeline stages are cut by each device's "
                     "speed (its compute at the mean speed)")
    return specs


def plan(model_or_param_count, *, devices: int, batch_size: int,
         device_memory: float | None = None, seq_len: int | None = None,
         microbatches: int | None = None, precision: str = "32",
         optimizer: str | int = "adam", device_flops: float | None = None,
         bandwidth: float | None = None, activation_bytes_per_sample: float | None = None,
         device: DeviceSpec | Sequence[DeviceSpec] | None = None, example_input=None,
         pipeline_schedule: str = "1f1b", reserve: float = 0.1,
         bf16_slowdown: float | None = None, refused: Mapping[str, str] | None = None,
         tensor_styles: Mapping[str, str] | None = None) -> Plan:
    """Estimate memory and step time of every strategy that can run, and rank them.

    Args:
        model_or_param_count: an nn.Module (profiled on the meta device), a ModelProfile,
            or a parameter count.
        devices: ranks (world size).
        batch_size: global samples per optimizer step.
        device_memory: bytes per rank (overrides the device spec).
        seq_len: tokens per sample for sequence models.
        microbatches: micro-batches per step (gradient accumulation; the pipeline schedule
            length). Default 1, and for "pipeline" what strategy="pipeline" runs:
            `pipeline_microbatches` (4, or one per stage beyond 4 stages).
        precision: "32", "bf16-mixed" or "16-mixed".
        optimizer: optimizer name ("adam", "sgd", ...) or its state bytes per parameter.
        device_flops: FLOP/s per rank (overrides the device spec).
        bandwidth: link bytes/s per rank (overrides the device spec).
        activation_bytes_per_sample: saved activation bytes of one sample; overrides the
            measured figure.
        device: per-rank DeviceSpec, or a list of one per rank for devices of different
            speeds (e.g. from a device inventory: bigtrain.parallel.inventory.rank_specs);
            default: this CPU host shared by `devices` ranks. With unequal speeds, evenly
            split strategies run at the slowest rank's speed and the planner also estimates
            "ddp_balanced" (the batch split by speed).
        example_input: one sample (batch dimension 1) when the input cannot be guessed.
        pipeline_schedule: "1f1b" or "gpipe" (activations kept per stage).
        reserve: fraction of device memory kept free for allocator slack and workspaces.
        bf16_slowdown: with precision="bf16-mixed" on CPU ranks, how many times longer a
            bf16 matmul takes than fp32 there; default: probed on this host when `device`
            is None (bigtrain.plan.bf16), else 1. Above SLOW_BF16_FACTOR, compute times are
            scaled by it and a note says so.
        refused: strategy name -> why it cannot split this model over `devices` ranks
            (the strategy's own `check_model`, asked by the caller: a tensor split that the
            layer sizes do not allow, a model a pipeline cannot cut). Those strategies are
            skipped with that reason, so they are never the best.
        tensor_styles: the runtime's tensor plan for `devices` ranks, layer name -> style
            (bigtrain.parallel.tensor_plan.tp_plan(model, devices)): tensor's memory counts
            only the layers it splits, and a plan that splits nothing skips "tensor". When
            None, layer widths bound what can split (bigtrain.plan.tensor_share).

    Example:
        >>> p = plan(1_000_000, devices=2, batch_size=32)
        >>> p.best.strategy in ("ddp", "zero1", "zero2", "zero3", "pipeline", "tensor", "ps")
        True
    """
    if devices < 1 or batch_size < 1:
        raise ValueError(f"devices and batch_size must be >= 1, got {devices}, {batch_size}")
    if pipeline_schedule not in ("1f1b", "gpipe"):
        raise ValueError(f"pipeline_schedule must be '1f1b' or 'gpipe', got {pipeline_schedule!r}")
    weights = list(model_or_param_count.parameters()) \
        if isinstance(model_or_param_count, nn.Module) else []
    if devices > 1 and weights and not any(p.requires_grad for p in weights):
        # every strategy refuses it on several processes (launch.fit_checks.frozen_refusal)
        raise ValueError(
            f"the model has no trainable weights (trainable=False on the model or on every "
            f"layer, or requires_grad=False on every parameter): there is nothing to train "
            f"on {devices} devices, so no strategy is planned; set trainable=True on the "
            "layers to train, or fit in one process (no strategy or devices) to run the "
            "frozen model's steps (they train nothing, as in Keras)")
    prof = _profile(model_or_param_count, seq_len, example_input)
    prec = get_precision(precision)
    notes = [f"model figures: {prof.method}"]
    specs = _rank_specs(device, devices, (device_memory, device_flops, bandwidth), precision,
                        bf16_slowdown, notes)
    spec, speeds = slowest(specs), [s.flops for s in specs]
    uneven = max(speeds) > UNEVEN_SPEED * min(speeds)
    act = _activation_per_sample(prof, prec, activation_bytes_per_sample, notes)
    notes.append("step time assumes no overlap of communication with compute (on CPU ranks "
                 "the rank's own core runs gloo's collectives and copies)")
    usable = spec.memory_bytes * (1.0 - reserve)
    host = (spec.host_memory_bytes or host_memory_bytes() / devices) * (1.0 - reserve)
    if prof.largest_unit_params is None:
        notes.append("layer sizes unknown: ZeRO-3/offload gather buffers not counted")
    tensor_split, tensor_why = _tensor_split(model_or_param_count, devices, tensor_styles,
                                             notes)
    if tensor_why and "tensor" not in (refused or {}):  # a refusal the caller prints itself
        notes.append(f"tensor not offered: {tensor_why}")
    timer = _kernel_timer(model_or_param_count, spec, precision, seq_len, example_input, notes)
    rates = step_rates(spec, prof.n_params, probed=timer is not None)  # update, comm, copies
    estimates, skipped = [], {}
    names = [*STRATEGIES, *SPEED_AWARE] if uneven else STRATEGIES
    mean_flops = sum(speeds) / len(speeds)
    for name in names:
        base = SPEED_AWARE.get(name, name)  # costed as its even counterpart...
        why = (refused or {}).get(name) or (refused or {}).get(base) or \
            _skip_reason(base, devices, batch_size, spec.kind) or \
            (tensor_why if base == "tensor" else None)
        if why:
            skipped[name] = why
            continue
        m = microbatches or (pipeline_microbatches(batch_size, devices)
                             if base == "pipeline" else 1)
        mem = _memory(base, prof, devices=devices, precision=precision, optimizer=optimizer,
                      act_per_sample=act, batch_size=batch_size, microbatches=m,
                      schedule=pipeline_schedule, tensor_split=tensor_split)
        # ...at the mean speed when the work follows each rank's speed
        rate = mean_flops if name in SPEED_AWARE or base == "pipeline" else spec.flops
        t = step_time(base, prof, prec, world_size=devices, batch_size=batch_size,
                      microbatches=m, flops=rate, bandwidth=spec.bandwidth,
                      host_bandwidth=spec.host_link, offload_moves=spec.kind != "cpu",
                      act_per_sample=act, latency=spec.latency, **rates,
                      optimizer_bytes=optimizer_bytes(optimizer, precision),
                      local_seconds=timer and functools.partial(timer, rate=rate))
        fits = mem.device_total <= usable and mem.offloaded_host <= host
        estimates.append(StrategyEstimate(name, mem, t, fits, m))
        if base == "pipeline":
            notes.append(pipeline_note(prof.chain, devices))
    estimates.sort(key=lambda e: (not e.fits, e.time.total, e.memory.device_total))
    ranked = [StrategyEstimate(e.strategy, e.memory, e.time, e.fits, e.microbatches,
                               reason_for(e, estimates, usable, host)) for e in estimates]
    return Plan(ranked, skipped, spec, usable, host, prof, notes)


__all__ = ["Plan", "StrategyEstimate", "plan", "rank_specs", "slowest"]
