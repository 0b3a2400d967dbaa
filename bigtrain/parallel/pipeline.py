"""Pipeline parallelism on torch.distributed.pipelining, with manual stage splitting.

The model's layer chain (`chain_layers`: embed, blocks..., head of a GPT, or the children
of an nn.Sequential) is cut into P * V contiguous stages, V per rank, balanced by measured
per-layer forward+backward time (`pipeline_partition`) or by `split=[layers per stage]`.
Each rank times every layer on its own device; the ranks gather the [rank x layer] table, so
all agree, and each stage is priced on the rank that will run it (the slowest of its
data/tensor-parallel replicas): a faster device gets more layers.
Stage s lives on pipeline rank s % P (the "loop" placement torch's multi-stage schedules
expect). One global step on P=2 ranks, M=4 micro-batches:

    gpipe   rank0  F0 F1 F2 F3 .. .. .. .. B0 B1 B2 B3        bubble (P-1)/(M+P-1)
            rank1  .. F0 F1 F2 F3 B0 B1 B2 B3 ..
    1f1b    rank0  F0 F1 .. F2 B0 F3 B1 .. B2 B3               same bubble, at most P
            rank1  .. F0 B0 F1 B1 F2 B2 F3 B3 ..               micro-batches in flight
    interleaved / zero_bubble: V=2 stages per rank shrink the bubble by ~V (zero bubble
            also fills it with weight-gradient work).

Data and loss. Every pipeline rank of one data-parallel replica reads the same batch. The
rank's micro-batches from the engine are concatenated, and the schedule re-splits them
into M equal micro-batches (so M must divide the per-replica batch). The schedule's loss
function receives sample indices as its "target" and looks up the targets and sample
weights itself, so any target structure works. Each micro-batch's loss is scaled by
(its samples / replica samples) * (sum of the engine's loss weights), which makes the M
micro-batch gradients add up to the gradient of the replica's weighted mean loss, exactly
as one big batch on one device. The mean loss and the outputs exist on the last stage; they
are broadcast over the pipeline group so every rank returns the same values.

Tied weights (GPT lm_head = token embedding). Layers keep their Parameter objects, so a
weight shared by two layers on one rank stays one tensor. When the sharing layers sit on
different ranks, each rank holds a copy; after backward the copies' gradients are summed
with an all-reduce over just those ranks, so both copies take identical optimizer steps.

Slow-rank knob (tests and benchmarks on one machine): `slow_ranks={1: 3.0}`, or the
environment variable BIGTRAIN_SLOW_RANKS="1:3.0", makes rank 1 sleep twice the time of each
of its forward and backward chunks, and of its layer timings, so it runs 3x slower.

Collectives per step: send/recv of activations and gradients between neighbouring stages
(schedule), all-reduce(sum) of tied gradients, all-reduce(avg) of gradients over "dp",
broadcast of loss and outputs from the last stage (a small header, then the outputs).

Example:
    strategy = Pipeline(stages=2, microbatches=4, schedule="1f1b")
    model.fit(x, y, batch_size=32, strategy=strategy, devices=2)
"""
from __future__ import annotations

import functools
import time
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from bigtrain.parallel.base import Strategy, StepBatch, register
from bigtrain.parallel.mesh import (ParallelDims, all_reduce_grads, broadcast_params,
                                    wrap_forward_with_checkpoint)
from bigtrain.parallel.pipeline_partition import (block_count, chain_layers,
                                                  device_aware_partition, measure_layer_costs,
                                                  parameter_costs, slowest_replica_costs)
from bigtrain.parallel.slow_ranks import check_slow_ranks, slow_ranks_option, slowed

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero_bubble")
_MULTI = ("interleaved", "zero_bubble")  # schedules that hold several stages per rank
# output dtypes and ranks the per-step header broadcast can describe (_broadcast_result)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
_MAX_DIMS = 8


class StageModule(nn.Module):
    """A run of consecutive layers of the original model; remembers their original names.

    Args:
        names: the layers' state-dict prefixes in the original model (e.g. "blocks.3").
        layers: the layer modules themselves (not copies).
    """

    def __init__(self, names: Sequence[str], layers: Sequence[nn.Module]):
        super().__init__()
        self.names = list(names)
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """This stage's tensors under the original model's key names."""
        out = {}
        for name, layer in zip(self.names, self.layers):
            for k, v in layer.state_dict().items():
                out[f"{name}.{k}"] = v
        return out


class PipelineModule(nn.Module):
    """What `Pipeline.setup_module` returns: this rank's stages (parameters for the optimizer).

    Calling it runs a forward-only pipeline step (every pipeline rank must call it with the
    same input); the result, from the last stage, is broadcast to all pipeline ranks.
    """

    def __init__(self, stages: Sequence[StageModule], strategy: "Pipeline"):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self._strategy = [strategy]  # a list keeps the strategy out of the module tree

    def forward(self, x):
        return self._strategy[0].forward_only(x)


class Pipeline(Strategy):
    """Pipeline parallelism over P ranks; further ranks (W / P) become data-parallel.

    Args:
        stages: pipeline degree P (ranks per pipeline); None: the world size.
        microbatches: M, micro-batches per step; must divide each replica's batch.
        schedule: one of "gpipe", "1f1b", "interleaved", "zero_bubble".
        split: layers per stage, overriding the measured balance (len P * V, sums to the
            number of cut-able layers, e.g. [3, 3] for embed + 4 blocks + head on P=2).
        stages_per_rank: V; default 2 for interleaved/zero_bubble, else 1.
        activation_checkpointing: recompute each block's activations in backward.
        sample_input: one micro-batch of model input used to time the layers; when None it
            is built from the model (GPT config, or the first Linear's width), else layers
            are weighed by parameter count.
        tp: tensor-parallel degree inside each stage (used by Hybrid).
        slow_ranks: rank -> slowdown factor >= 1 for testing, e.g. {1: 3.0}; default from the
            BIGTRAIN_SLOW_RANKS environment variable (see the module docstring).

    Example:
        Pipeline(stages=2, microbatches=8, schedule="interleaved")
    """

    name = "pipeline"
    owns_step = True
    supports_loss_scaling = False  # the schedule calls the loss itself

    def __init__(self, stages: int | None = None, microbatches: int = 4,
                 schedule: str = "1f1b", split: Sequence[int] | None = None,
                 stages_per_rank: int | None = None, activation_checkpointing: bool = False,
                 sample_input: torch.Tensor | None = None, tp: int = 1,
                 slow_ranks: dict[int, float] | None = None):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown pipeline schedule {schedule!r}; valid schedules: "
                             f"{', '.join(SCHEDULES)}")
        for label, v in (("stages", stages), ("microbatches", microbatches), ("tp", tp),
                         ("stages_per_rank", stages_per_rank)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"Pipeline {label} must be an integer >= 1, got {v!r}")
        if stages_per_rank not in (None, 1) and schedule not in _MULTI:
            raise ValueError(f"schedule {schedule!r} runs one stage per rank; use "
                             f"schedule='interleaved' or 'zero_bubble' for stages_per_rank="
                             f"{stages_per_rank}")
        self.stages = stages
        self.microbatches = microbatches
        self.schedule = schedule
        self.split = list(split) if split is not None else None
        self.stages_per_rank = stages_per_rank or (2 if schedule in _MULTI else 1)
        self.activation_checkpointing = activation_checkpointing
        self.sample_input = sample_input
        self.tp = tp
        self.slow_ranks = slow_ranks_option(slow_ranks)
        self._rt = None  # runtime state built in setup/setup_module

    # ---- checks before any process group ------------------------------------------------
    def num_processes(self, devices):
        return (self.stages or 2) * self.tp if devices is None else int(devices)

    def _dims(self, world_size: int) -> ParallelDims:
        pp = world_size // self.tp if self.stages is None else self.stages
        return ParallelDims.infer(world_size, tp=self.tp, pp=pp)

    def validate(self, world_size: int, global_batch_size: int) -> None:
        dims = self._dims(world_size)
        check_slow_ranks(self.slow_ranks, world_size)
        if global_batch_size % dims.dp:
            raise ValueError(f"global batch {global_batch_size} does not split over {dims.dp} "
                             f"data-parallel replicas; use a batch size divisible by {dims.dp}")
        per_replica = global_batch_size // dims.dp
        m = self.microbatches
        if per_replica % m:
            lo = per_replica - per_replica % m
            divisors = [d for d in range(1, per_replica + 1) if per_replica % d == 0]
            raise ValueError(
                f"microbatches={m} does not divide the batch of {per_replica} samples per "
                f"pipeline replica; use a batch size of {lo or m} or {lo + m} (per replica), "
                f"or microbatches among {divisors}")
        if self.schedule in _MULTI:
            rounds = max(1, m // dims.pp)
            if m % rounds:
                raise ValueError(f"schedule {self.schedule!r} on {dims.pp} pipeline ranks needs "
                                 f"microbatches to be a multiple of {rounds}; use "
                                 f"microbatches={rounds * (m // rounds)} or a multiple of {dims.pp}")

    def check_module(self, module: nn.Module, pp: int) -> list[tuple[str, nn.Module]]:
        """The layer chain of `module`, or ValueError if it cannot form `pp` * V stages."""
        layers = chain_layers(module)
        n_stages = pp * self.stages_per_rank
        blocks = block_count(layers)
        if n_stages > len(layers) or (blocks < len(layers) and n_stages > blocks):
            raise ValueError(
                f"{n_stages} pipeline stages ({pp} ranks x {self.stages_per_rank} per rank) "
                f"but the model has only {blocks} blocks ({len(layers)} cut-able layers); use "
                f"at most {blocks // self.stages_per_rank or 1} pipeline ranks or a deeper model")
        if self.split is not None:
            if len(self.split) != n_stages or sum(self.split) != len(layers) or min(self.split) < 1:
                raise ValueError(
                    f"split={self.split} must list {n_stages} positive layer counts summing "
                    f"to {len(layers)} (the cut-able layers: {[n for n, _ in layers]})")
        return layers

    # ---- setup --------------------------------------------------------------------------
    def setup(self, env) -> None:
        super().setup(env)
        if not env.distributed:
            raise ValueError("Pipeline needs several processes (one per stage); run with "
                             "devices >= 2 or under the launcher, or use strategy='single'")
        self._rt = _Runtime(self, env, self._dims(env.world_size))

    def setup_module(self, module: nn.Module) -> nn.Module:
        rt = self._rt
        layers = self.check_module(module, rt.dims.pp)  # same error on every rank
        if rt.dims.tp > 1:
            from bigtrain.parallel.tensor_parallel import check_tp
            check_tp(module, rt.dims.tp)
        module.to(self.env.device)
        self.model_keys = set(module.state_dict())  # checkpoints name tensors by these
        counts = self.split or self._balance(module, layers, rt)
        self.partition = list(counts)  # layers per stage, in stage order
        stages = rt.build(layers, counts)
        if self.activation_checkpointing:
            for stage in stages:
                for layer in stage.layers:
                    if next(layer.parameters(), None) is not None:
                        wrap_forward_with_checkpoint(layer)
        return PipelineModule(stages, self)

    def _balance(self, module, layers, rt) -> list[int]:
        """Layer counts per stage from every rank's own layer costs (module docstring)."""
        slow = self.slow_ranks.get(self.env.rank, 1.0)
        sample = self.sample_input if self.sample_input is not None else _sample_for(module)
        if sample is None:
            costs = [c * slow for c in parameter_costs(layers)]
        else:
            costs = measure_layer_costs(layers, sample.to(self.env.device), slowdown=slow)
        table = torch.zeros(self.env.world_size, len(costs), dtype=torch.float64,
                            device=self.env.device)
        table[self.env.rank] = torch.tensor(costs, dtype=torch.float64)
        dist.all_reduce(table)  # [rank x layer], zero-padded: the same table on every rank
        owner = [rt.dims.coords(r)["pp"] for r in range(self.env.world_size)]
        #: [pipeline rank x layer] seconds, each row the slowest replica at that coordinate
        self.layer_costs = slowest_replica_costs(table.tolist(), owner)
        n_stages = rt.dims.pp * self.stages_per_rank
        return device_aware_partition(self.layer_costs, [s % rt.dims.pp for s in range(n_stages)])

    def data_shard(self) -> tuple[int, int]:
        if self._rt is None:
            return (0, 1)
        return (self._rt.dims.coords(self.env.rank)["dp"], self._rt.dims.dp)

    # ---- one step -----------------------------------------------------------------------
    def train_step(self, module, optimizer, batch: StepBatch, compute_loss, autocast):
        """Run the schedule on this replica's batch; returns (outputs per micro, mean loss)."""
        outputs, loss = self._rt.step(batch, compute_loss, autocast)
        self.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return outputs, loss

    def optimizer_step(self, optimizer) -> None:
        self.mark("gradient all-reduce (tied, dp)", phase="comm")
        self._rt.sync_grads()
        self.mark("optimizer step")
        optimizer.step()

    timing_note = ("forward and backward are this rank's stage compute inside the schedule "
                   "(the last stage's loss counts as forward); other is the rest of the "
                   "schedule's wall time: the bubble and waits on send/recv to neighbouring "
                   "stages; comm_exposed is the loss and output broadcast and the gradient "
                   "all-reduces (a stage that ends its schedule first waits there for the "
                   "others: that cool-down idle is in comm_exposed, not in the bubble)")

    def stats(self) -> dict:
        """Pipeline shape and the measured bubble (see `_Runtime.bubble`), for FitResult
        and the run record."""
        if self._rt is None:
            return {}
        p, m, v = self._rt.dims.pp, self.microbatches, self.stages_per_rank
        return {"pipeline_stages": p, "pipeline_microbatches": m,
                "pipeline_bubble": self._rt.bubble(),
                "pipeline_bubble_theory": (p - 1) / (v * m + p - 1)}

    def forward_only(self, x):
        return self._rt.forward_only(x)

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return self._rt.full_state_dict()

    def checkpoint_names(self, module: "PipelineModule"):
        """Checkpoints name a stage's tensors as the user's model does: the local
        "stages.<i>.layers.<j>.<rest>" becomes "<name of layer j of stage i>.<rest>", so every
        stage writes its own keys and a checkpoint loads under any other strategy."""
        stages = module.stages

        def rename(fqn: str) -> str:
            _, i, _, j, rest = fqn.split(".", 4)
            return f"{stages[int(i)].names[int(j)]}.{rest}"
        return rename, self.model_keys

    def teardown(self) -> None:
        self._rt = None

    def describe(self) -> str:
        return (f"stages={self.stages or 'world'}, microbatches={self.microbatches}, "
                f"schedule={self.schedule!r}" + (f", split={self.split}" if self.split else "")
                + (f", slow ranks {self.slow_ranks}" if self.slow_ranks else ""))

    def __eq__(self, other):
        keys = ("stages", "microbatches", "schedule", "split", "stages_per_rank",
                "activation_checkpointing", "tp", "slow_ranks")
        return type(self) is type(other) and all(getattr(self, k) == getattr(other, k)
                                                 for k in keys)


def _sample_for(module: nn.Module) -> torch.Tensor | None:
    """A 2-sample input for timing layers, when the model tells its input shape."""
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "vocab_size") and hasattr(cfg, "block_size"):
        return torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    first = next((m for m in module.modules() if isinstance(m, (nn.Linear, nn.Embedding))),
                 None)
    if isinstance(first, nn.Linear):
        return torch.randn(2, first.in_features)
    return None


class _Runtime:
    """Per-rank pipeline state: mesh groups, local stages, schedule, tied-weight groups."""

    def __init__(self, strategy: Pipeline, env, dims: ParallelDims):
        self.s, self.env, self.dims = strategy, env, dims
        self.mesh = dims.build_mesh(env.device.type)
        me = dims.coords(env.rank)
        self.pp_rank, self.dp_idx, self.tp_idx = me["pp"], me["dp"], me["tp"]
        self.pp_group = self.mesh["pp"].get_group()
        self.dp_group = self.mesh["dp"].get_group()
        self.last_rank = dims.rank_of(pp=dims.pp - 1, dp=self.dp_idx, tp=self.tp_idx)
        self.ties: list[tuple[list[nn.Parameter], object]] = []
        self._ctx = None
        self._busy: list[float] | None = None   # [forward, backward] s of a timed step
        self._timed: list[tuple[float, float]] = []  # (busy, schedule wall) s per timed step

    # ---- building ---------------------------------------------------------------------
    def build(self, layers, counts: Sequence[int]) -> list[StageModule]:
        """Cut `layers` by `counts`, keep this rank's stages, wrap them in a schedule."""
        from torch.distributed.pipelining import PipelineStage
        P, n_stages = self.dims.pp, len(counts)
        starts = [sum(counts[:i]) for i in range(n_stages)]
        self.stage_ids = [s for s in range(n_stages) if s % P == self.pp_rank]
        self.modules = [StageModule([n for n, _ in layers[starts[s]:starts[s] + counts[s]]],
                                    [m for _, m in layers[starts[s]:starts[s] + counts[s]]])
                        for s in self.stage_ids]
        self._setup_ties(layers, starts, counts)
        if self.dims.tp > 1:
            self._apply_tp()
        broadcast_params(self.params(), self.dp_group)  # replicas start equal
        self.pstages = [PipelineStage(m, s, n_stages, self.env.device, group=self.pp_group)
                        for m, s in zip(self.modules, self.stage_ids)]
        self._slow_down(self.s.slow_ranks.get(self.env.rank, 1.0))
        self.schedule = self._make_schedule()
        return self.modules

    def _slow_down(self, factor: float) -> None:
        """The slow-rank knob: each forward/backward chunk of this rank's stages sleeps
        (factor - 1) x its own time (compute only: the schedule's send/recv waits are not
        inside a chunk)."""
        if factor <= 1.0:
            return
        for st in self.pstages:
            for name in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
                if hasattr(st, name):
                    setattr(st, name, slowed(getattr(st, name), factor))

    def _apply_tp(self) -> None:
        """Shard each local stage over "tp"; weights tied across stages stay replicated."""
        from bigtrain.parallel.tensor_parallel import apply_tp, check_tp, tp_plan
        tied = {id(p) for params, _ in self.ties for p in params}
        for m in self.modules:
            check_tp(m, self.dims.tp)
            plan = tp_plan(m, self.dims.tp)
            for name in plan:
                if id(m.get_submodule(name).weight) in tied:
                    plan[name] = "replicate"
            apply_tp(m, self.mesh["tp"], plan)

    def _make_schedule(self):
        from torch.distributed import pipelining as pl
        cls = {"gpipe": pl.ScheduleGPipe, "1f1b": pl.Schedule1F1B,
               "interleaved": pl.ScheduleInterleaved1F1B,
               "zero_bubble": pl.ScheduleInterleavedZeroBubble}[self.s.schedule]
        stage = self.pstages if self.s.schedule in _MULTI else self.pstages[0]
        # scale_grads=False: _loss already weighs each micro-batch (module docstring)
        return cls(stage, n_microbatches=self.s.microbatches, loss_fn=self._loss,
                   scale_grads=False)

    def _setup_ties(self, layers, starts, counts) -> None:
        """Groups of ranks holding copies of a weight shared by layers on different ranks."""
        layer_rank = {}
        for s, (a, c) in enumerate(zip(starts, counts)):
            for i in range(a, a + c):
                layer_rank[i] = s % self.dims.pp
        holders: dict[int, tuple[nn.Parameter, set[int]]] = {}
        for i, (_, layer) in enumerate(layers):
            for p in layer.parameters():
                holders.setdefault(id(p), (p, set()))[1].add(layer_rank[i])
        spans: dict[tuple[int, ...], list[nn.Parameter]] = {}
        for p, ranks in holders.values():
            if len(ranks) > 1:
                spans.setdefault(tuple(sorted(ranks)), []).append(p)
        for pp_ranks, params in spans.items():  # same order on every rank: new_group rule
            for dp in range(self.dims.dp):
                for tp in range(self.dims.tp):
                    ranks = [self.dims.rank_of(pp=r, dp=dp, tp=tp) for r in pp_ranks]
                    group = dist.new_group(ranks)
                    if self.env.rank in ranks:
                        broadcast_params(params, group)  # copies start equal
                        self.ties.append((params, group))

    def params(self) -> list[nn.Parameter]:
        seen, out = set(), []
        for m in self.modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    # ---- one step ---------------------------------------------------------------------
    def _loss(self, output, ids):
        """The schedule's loss: `ids` are the micro-batch's sample indices (see docstring)."""
        if self._ctx is None:  # forward-only pass: schedules still ask the last stage
            return output.new_zeros(())
        y, sw, compute_loss, n, wsum, record = self._ctx
        t0 = self._clock()
        loss = compute_loss(output, _take(y, ids), None if sw is None else sw[ids])
        if self._busy is not None:
            self._busy[0] += self._clock() - t0
        # keyed by first sample: the schedule's one-off metadata pass (on placeholder
        # activations) calls this too, and the real micro-batch overwrites its entry
        record[int(ids[0])] = (loss.detach().float(), ids.numel())
        return loss * (ids.numel() / n * wsum)

    def step(self, batch: StepBatch, compute_loss, autocast):
        x = _cat([_single(m[0]) for m in batch.micro])
        y = _cat([m[1] for m in batch.micro])
        sws = [m[2] for m in batch.micro]
        sw = None if any(w is None for w in sws) else torch.cat(sws)
        n, m = x.shape[0], self.s.microbatches
        if n % m:
            raise ValueError(f"microbatches={m} does not divide this replica's batch of {n} "
                             f"samples; use a batch size divisible by {m}")
        record: dict[int, tuple[torch.Tensor, int]] = {}
        self._ctx = (y, sw, compute_loss, n, float(sum(batch.weights)), record)
        idx = torch.arange(n, device=x.device)
        has_first = any(st.is_first for st in self.pstages)
        has_last = any(st.is_last for st in self.pstages)
        timer = self.s.phase_timer
        self._start_timing(timer is not None and timer.active)
        t0 = self._clock()
        with autocast():
            out = self.schedule.step(*((x,) if has_first else ()),
                                     target=idx if has_last else None)
        self._stop_timing(self._clock() - t0, timer)
        self._ctx = None
        loss = sum(l * c for l, c in record.values()) / n if has_last else None
        self.s.mark("loss and output broadcast", phase="comm")
        out, loss = self._broadcast_result(out if has_last else None, loss)
        sizes = [_single(mb[0]).shape[0] for mb in batch.micro]
        return list(torch.split(out, sizes)), loss

    # ---- timing: stage compute vs the schedule's wall time ------------------------------
    def _clock(self) -> float:
        """perf_counter, after the device finished its queued work when this step is timed
        (on CPU ops are synchronous: no wait)."""
        if self._busy is not None and self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        return time.perf_counter()

    def _start_timing(self, on: bool) -> None:
        """Time this step's stage chunks (the step timer samples it); wraps the stages'
        chunk methods on first use."""
        self._busy = [0.0, 0.0] if on else None
        if on and not getattr(self, "_chunks_timed", False):
            for st in self.pstages:
                for name, slot in (("forward_one_chunk", 0), ("backward_one_chunk", 1),
                                   ("backward_weight_one_chunk", 1)):
                    if hasattr(st, name):
                        setattr(st, name, self._timed_chunk(getattr(st, name), slot))
            self._chunks_timed = True

    def _timed_chunk(self, fn, slot: int):
        """`fn` that adds its own seconds to `self._busy[slot]` on timed steps."""
        @functools.wraps(fn)
        def chunk(*args, **kwargs):
            if self._busy is None:
                return fn(*args, **kwargs)
            t0 = self._clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self._busy[slot] += self._clock() - t0
        return chunk

    def _stop_timing(self, wall: float, timer) -> None:
        """Charge the stage compute of a timed step to forward/backward (the rest of the
        schedule stays "other": idle) and keep (busy, wall) for the bubble."""
        if self._busy is None:
            return
        fwd, bwd = self._busy
        self._busy = None
        timer.split_current("forward", fwd)
        timer.split_current("backward", bwd)
        self._timed.append((fwd + bwd, wall))

    def bubble(self) -> float | None:
        """Measured idle share of the schedule on this rank: 1 - stage compute / schedule
        wall time, over the timed steps (the first, with the schedule's shape exchange and
        warm-up, left out when others exist). Idle includes send/recv waits; None before
        any timed step."""
        steps = self._timed[1:] if len(self._timed) > 1 else self._timed
        wall = sum(w for _, w in steps)
        if wall <= 0:
            return None
        return min(1.0, max(0.0, 1.0 - sum(b for b, _ in steps) / wall))

    def _broadcast_result(self, out, loss=None):
        """The last stage's output (and mean loss) on every pipeline rank.

        Two broadcasts from the last stage: a header of 3 + _MAX_DIMS float64 (loss, dtype
        code, ndim, shape), then the output itself. Pickled metadata (broadcast_object_list:
        three collectives and a pickle every step) is only the fallback for outputs the
        header cannot describe.

        Args:
            out: the output on the last stage, None elsewhere.
            loss: the mean loss (float32 scalar) on the last stage, None elsewhere.

        Returns:
            (output, loss) on every pipeline rank; loss is a float32 scalar tensor.
        """
        header = torch.zeros(3 + _MAX_DIMS, dtype=torch.float64, device=self.env.device)
        if out is not None:
            fits = out.dtype in _DTYPES and out.dim() <= _MAX_DIMS
            header[1], header[2] = (_DTYPES.index(out.dtype) if fits else -1), out.dim()
            if fits:
                header[3:3 + out.dim()] = torch.tensor(out.shape, dtype=torch.float64)
            if loss is not None:
                header[0] = loss
        dist.broadcast(header, src=self.last_rank, group=self.pp_group)
        h = header.tolist()
        code, ndim = int(h[1]), int(h[2])
        if code >= 0:
            shape, dtype = tuple(int(d) for d in h[3:3 + ndim]), _DTYPES[code]
        else:
            meta = [(tuple(out.shape), out.dtype) if out is not None else None]
            dist.broadcast_object_list(meta, src=self.last_rank, group=self.pp_group)
            shape, dtype = meta[0]
        buf = out.detach() if out is not None else torch.empty(shape, dtype=dtype,
                                                              device=self.env.device)
        dist.broadcast(buf, src=self.last_rank, group=self.pp_group)
        # float32 -> float64 -> float32 is exact: every rank returns the last stage's loss
        return buf, (loss if loss is not None else header[0].to(torch.float32))

    def sync_grads(self) -> None:
        """Sum tied-weight gradients over their holders, then average over replicas."""
        for params, group in self.ties:
            all_reduce_grads(params, group, average=False, materialize=True)
        all_reduce_grads(self.params(), self.dp_group)

    def forward_only(self, x):
        """Forward through all stages (no backward); pads the batch to a multiple of M."""
        x = _single(x)
        n, m = x.shape[0], self.s.microbatches
        pad = (-n) % m
        if pad:
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
        first = any(st.is_first for st in self.pstages)
        last = any(st.is_last for st in self.pstages)
        ids = torch.arange(x.shape[0], device=x.device)
        out = self.schedule.eval(*((x,) if first else ()), target=ids if last else None)
        return self._broadcast_result(out if last else None)[0][:n]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Rank 0 gets every stage's tensors under the original names (gather_object)."""
        from bigtrain.parallel.tensor_parallel import full_tensor_state_dict
        mine = []
        for sid, m in zip(self.stage_ids, self.modules):
            full = full_tensor_state_dict(m)  # collective over tp (DTensor -> full)
            mine.append((sid, {f"{m.names[int(k.split('.')[1])]}.{k.split('.', 2)[2]}": v
                               for k, v in full.items()}))
        parts = [None] * self.env.world_size if self.env.rank == 0 else None
        dist.gather_object(mine if self.dp_idx == 0 and self.tp_idx == 0 else [],
                           parts, dst=0)
        if self.env.rank != 0:
            return {}
        merged = {}
        for sid, sd in sorted((item for part in parts for item in part), key=lambda t: t[0]):
            merged.update(sd)
        return merged


def _single(x):
    """The input tensor of a single-input model (a 1-tuple is unwrapped)."""
    if isinstance(x, (tuple, list)):
        if len(x) != 1:
            raise ValueError(f"Pipeline feeds one input tensor to the first stage, got "
                             f"{len(x)} inputs; merge them into one tensor (or one layer)")
        return x[0]
    return x


def _cat(parts):
    if isinstance(parts[0], (tuple, list)):
        return type(parts[0])(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


def _take(y, ids):
    if isinstance(y, (tuple, list)):
        return type(y)(t[ids] for t in y)
    return y[ids]


# stages=None: one stage per process; 4 micro-batches; 1F1B keeps activation memory low
register("pipeline", lambda: Pipeline(stages=None, microbatches=4, schedule="1f1b"))
