"""One rank's share of a pipeline: its stages, the torch.distributed.pipelining schedule that
runs them, tied-weight groups, the per-step broadcasts of loss and outputs, the timing of
the stages' compute (pipeline bubble) and the gathering of the full state.

`Pipeline` (bigtrain.parallel.pipeline) decides the cut and the schedule and hands them in
as `PipelineSettings`; this module runs them and never reads the strategy back. See that
module's docstring for the data, loss and tied-weight conventions.

Lifecycle on every rank:
    rt = PipelineRuntime(settings, env, topo)
    stages = parallelize(module, topo, pipeline=rt.cutter(layers, counts))   # PP -> TP -> ...
    rt.start()                                   # PipelineStages + schedule
    outputs, loss = rt.step(batch, compute_loss, autocast, ctx)   # ctx: the step's StepContext
    rt.sync_grads(); optimizer.step()
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from bigtrain.parallel.base import StepBatch
from bigtrain.parallel.comm import all_reduce_grads, broadcast_params
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.dims import Topology
from bigtrain.parallel.parallelize import sync_grads, unique_params
from bigtrain.parallel.pipeline_stage import (ChunkTimer, StageModule, broadcast_result,
                                              cat_batches, keep_state_in_metadata_pass,
                                              single_input, stage_seed, take_rows,
                                              wrap_chunks)
from bigtrain.parallel.slow_ranks import slowed

#: schedules that hold several stages per rank
MULTI_STAGE = ("interleaved", "zero_bubble")


@dataclass(frozen=True)
class PipelineSettings:
    """What the runtime needs from the strategy, passed in once.

    Attributes:
        schedule: "gpipe", "1f1b", "interleaved" or "zero_bubble".
        microbatches: M, micro-batches per step.
        micro_rows: samples per micro-batch for the run (replica batch / M); None: fixed by
            the first batch seen.
        slowdown: this rank's slow-rank factor (1.0: normal speed), bigtrain.parallel.slow_ranks.
        early_recv: post each step's receives at its start where that is safe (gloo, one
            stage per rank; bigtrain.parallel.early_recv).
        seed: the run's base seed (bigtrain.parallel.seeds.draw_seed); `start` seeds this rank's
            torch stream (dropout) from it, its pipeline rank and its replica. None: the
            stream is left as it is.
    """
    schedule: str
    microbatches: int
    micro_rows: int | None = None
    slowdown: float = 1.0
    early_recv: bool = True
    seed: int | None = None


class PipelineRuntime:
    """Per-rank pipeline state: mesh groups, local stages, schedule, tied-weight groups.

    Args:
        settings: the schedule and micro-batching (PipelineSettings).
        env: this rank's DistEnv.
        topo: this rank's mesh (bigtrain.parallel.dims.Topology).
    """

    def __init__(self, settings: PipelineSettings, env, topo: Topology):
        self.settings, self.env, self.topo, self.dims = settings, env, topo, topo.dims
        self.pp_rank, self.dp_idx, self.tp_idx = (topo.coords[k] for k in ("pp", "dp", "tp"))
        self.pp_group = topo.group("pp")
        self.last_rank = topo.last_stage_rank()
        self.ties: list[tuple[list[nn.Parameter], object]] = []
        self._ctx = None
        self.micro_rows: int | None = settings.micro_rows  # samples per micro-batch
        self._pad_row: torch.Tensor | None = None  # one real input row, for padding
        self.timing = ChunkTimer(env.device)

    # ---- building ---------------------------------------------------------------------
    def cutter(self, layers, counts: Sequence[int]):
        """Step 1 of bigtrain.parallel.parallelize: a function of the model that returns this
        rank's stages of `layers` cut by `counts` (stage s on pipeline rank s % P) and the ids
        of the weights tied across pipeline ranks."""
        return lambda module: self.cut(layers, counts)

    def cut(self, layers, counts: Sequence[int]) -> tuple[list[StageModule], set[int]]:
        """This rank's stages of `layers` and the tied-weight ids (see `cutter`)."""
        n_stages = len(counts)
        starts = [sum(counts[:i]) for i in range(n_stages)]
        self.n_stages = n_stages
        self.stage_ids = [s for s in range(n_stages) if s % self.dims.pp == self.pp_rank]
        self.modules = [StageModule([n for n, _ in layers[starts[s]:starts[s] + counts[s]]],
                                    [m for _, m in layers[starts[s]:starts[s] + counts[s]]])
                        for s in self.stage_ids]
        self._setup_ties(layers, starts, counts)
        return self.modules, {id(p) for params, _ in self.ties for p in params}

    def start(self) -> None:
        """Seed this rank's random stream, wrap the (parallelized) stages in PipelineStages
        and build the schedule."""
        from torch.distributed.pipelining import PipelineStage
        if self.settings.seed is not None:  # one stream per stage and replica (see Pipeline)
            torch.manual_seed(stage_seed(self.settings.seed, self.pp_rank, self.dp_idx))
        stage, extra = PipelineStage, {}
        if (self.settings.early_recv and self.settings.schedule not in MULTI_STAGE
                and dist.get_backend(self.pp_group) == "gloo"):
            from bigtrain.parallel.early_recv import EarlyRecvStage  # receives posted early
            stage, extra = EarlyRecvStage, {"microbatches": self.settings.microbatches,
                                            "grad_group": self._grad_group()}
        self.pstages = [stage(m, s, self.n_stages, self.env.device, group=self.pp_group, **extra)
                        for m, s in zip(self.modules, self.stage_ids)]
        keep_state_in_metadata_pass(self.pstages)  # its forward is no training step
        if self.settings.slowdown > 1.0:
            # the slow-rank knob: each compute chunk sleeps (factor - 1) x its own time
            # (compute only: the schedule's send/recv waits are not inside a chunk)
            wrap_chunks(self.pstages, lambda fn, _: slowed(fn, self.settings.slowdown))
        self.schedule = self._make_schedule()

    def _grad_group(self):
        """A second gloo group over this rank's pipeline column, for the gradients (see
        bigtrain.parallel.early_recv: two ranks sending to each other at once on one group
        stalled 4-5 ms in the send call). Every rank creates every column's group, in the
        same order (torch.distributed.new_group's rule)."""
        d, mine = self.dims, None
        for dp in range(d.dp):
            for tp in range(d.tp):
                ranks = [d.rank_of(pp=i, dp=dp, tp=tp) for i in range(d.pp)]
                group = dist.new_group(ranks, backend="gloo")
                if self.env.rank in ranks:
                    mine = group
        if mine is not None:  # gloo's connect can return on one rank before its peer's
            dist.barrier(group=mine)  # has: a rank leaving at once closed it under the peer
        return mine

    def _make_schedule(self):
        from torch.distributed import pipelining as pl
        name = self.settings.schedule
        cls = {"gpipe": pl.ScheduleGPipe, "1f1b": pl.Schedule1F1B,
               "interleaved": pl.ScheduleInterleaved1F1B,
               "zero_bubble": pl.ScheduleInterleavedZeroBubble}[name]
        stage = self.pstages if name in MULTI_STAGE else self.pstages[0]
        # scale_grads=False: _loss already weighs each micro-batch (pipeline docstring)
        return cls(stage, n_microbatches=self.settings.microbatches, loss_fn=self._loss,
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
        return unique_params(self.modules)

    # ---- one step ---------------------------------------------------------------------
    def _loss(self, output, ids):
        """The schedule's loss: `ids` are the micro-batch's sample indices (see docstring);
        ids >= n are padding rows (always at the end), which the loss does not read.

        It runs on the pipeline's critical path once per micro-batch, right after a chunk
        of compute has pushed its code out of the caches, so it does no work it can skip."""
        if self._ctx is None:  # forward-only pass: schedules still ask the last stage
            return output.new_zeros(())
        y, sw, compute_loss, n, wsum, record, idx = self._ctx
        t0 = self.timing.clock()
        first = _first_id(ids, idx)
        real = min(max(n - first, 0), ids.numel())  # rows of this micro-batch that are data
        if real == 0:  # all padding: a zero loss that keeps the graph (zero gradient)
            loss = output.float().sum() * 0.0
        else:
            # the schedule splits arange(rows) in order: a micro-batch's ids are consecutive,
            # so its targets are a view (a gather copied them: 50-80 us per micro-batch)
            rows = slice(first, first + real)
            loss = compute_loss(output if real == output.shape[0] else output[:real],
                                take_rows(y, rows), None if sw is None else sw[rows])
        self.timing.add(0, self.timing.clock() - t0)
        # keyed by first sample: the schedule's one-off metadata pass (on placeholder
        # activations) calls this too, and the real micro-batch overwrites its entry
        seen = loss.detach()
        record[first] = (seen if seen.dtype == torch.float32 else seen.float(), real)
        return loss * (real / n * wsum) if real else loss

    def step(self, batch: StepBatch, compute_loss, autocast, ctx: StepContext):
        """Run the schedule on this replica's batch; (outputs per micro-batch, mean loss)."""
        x = cat_batches([single_input(m[0]) for m in batch.micro])
        y = cat_batches([m[1] for m in batch.micro])
        sws = [m[2] for m in batch.micro]
        sw = None if any(w is None for w in sws) else torch.cat(sws)
        n, m = x.shape[0], self.settings.microbatches
        rows = self._micro_rows(n)
        if n > rows * m:
            raise ValueError(f"this replica's batch of {n} samples exceeds the pipeline's "
                             f"{m} micro-batches of {rows} samples set by the first step; "
                             "keep the batch size of the run")
        x = self._pad(x, rows * m)
        record: dict[int, tuple[torch.Tensor, int]] = {}
        idx = torch.arange(x.shape[0], device=x.device)
        self._ctx = (y, sw, compute_loss, n, float(sum(batch.weights)), record, idx)
        has_first = any(st.is_first for st in self.pstages)
        has_last = any(st.is_last for st in self.pstages)
        out = self._run_schedule(autocast, (x,) if has_first else (),
                                 idx if has_last else None, ctx)
        self._ctx = None
        loss = None
        if has_last:  # mean over the replica's real samples (0 for an empty share)
            loss = (sum(l * c for l, c in record.values()) / n if n
                    else torch.zeros((), device=out.device))
        ctx.mark("loss and output broadcast", phase="comm")
        out, loss = self._broadcast_result(out if has_last else None, loss)
        sizes = [single_input(mb[0]).shape[0] for mb in batch.micro]
        return list(torch.split(out[:n], sizes)), loss

    def _run_schedule(self, autocast, inputs: tuple, target, ctx: StepContext):
        """One schedule step, its stage compute timed when the step's timer samples it."""
        timer = ctx.timer
        self.timing.start(self.pstages, timer is not None and timer.active)
        t0 = self.timing.clock()
        with autocast(), labels_only_when_profiling():
            out = self.schedule.step(*inputs, target=target)
        self.timing.stop(self.timing.clock() - t0, timer)
        return out

    def _micro_rows(self, n: int) -> int:
        """Samples per micro-batch: the settings' (from the run's batch size), else fixed by
        the first batch seen (n samples)."""
        if self.micro_rows is None:
            self.micro_rows = max(1, -(-n // self.settings.microbatches))
        return self.micro_rows

    def _pad(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """`x` with rows appended up to `rows`: copies of a real sample (finite values,
        valid token ids), kept from the first non-empty batch for an empty share."""
        if x.shape[0] and self._pad_row is None:
            self._pad_row = x[:1].detach().clone()
        if x.shape[0] == rows:
            return x
        fill = self._pad_row if self._pad_row is not None else x.new_zeros((1, *x.shape[1:]))
        return torch.cat([x, fill.expand(rows - x.shape[0], *x.shape[1:])])

    def bubble(self) -> float | None:
        """Measured idle share of the schedule on this rank (see ChunkTimer.bubble)."""
        return self.timing.bubble()

    def _broadcast_result(self, out, loss=None):
        """The last stage's output (and mean loss) on every pipeline rank (broadcast_result
        from the last stage of this rank's column over the pipeline group)."""
        return broadcast_result(out, loss, self.last_rank, self.pp_group, self.env.device)

    def sync_grads(self) -> None:
        """Sum tied-weight gradients over their holders, then average over replicas."""
        for params, group in self.ties:
            all_reduce_grads(params, group, average=False, materialize=True)
        sync_grads(self.params(), self.topo)

    def forward_only(self, x):
        """Forward through all stages (no backward), in chunks of M micro-batches of
        `micro_rows` samples; the last chunk is padded (see docstring)."""
        x = single_input(x)
        n = x.shape[0]
        chunk = self._micro_rows(n) * self.settings.microbatches
        first = any(st.is_first for st in self.pstages)
        last = any(st.is_last for st in self.pstages)
        ids = torch.arange(chunk, device=x.device)
        outs = []
        for start in range(0, n, chunk) if n else [0]:
            part = x[start:start + chunk]
            with labels_only_when_profiling():
                out = self.schedule.eval(*((self._pad(part, chunk),) if first else ()),
                                         target=ids if last else None)
            outs.append(self._broadcast_result(out if last else None)[0][:part.shape[0]])
        return torch.cat(outs)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Rank 0 gets every stage's tensors under the original names (gather_object)."""
        from bigtrain.parallel.tensor_plan import full_tensor_state_dict
        mine = []
        for sid, m in zip(self.stage_ids, self.modules):
            full = full_tensor_state_dict(m)  # collective over tp (DTensor -> full)
            mine.append((sid, {m.original_name(k): v for k, v in full.items()}))
        parts = [None] * self.env.world_size if self.env.rank == 0 else None
        dist.gather_object(mine if self.dp_idx == 0 and self.tp_idx == 0 else [],
                           parts, dst=0)
        if self.env.rank != 0:
            return {}
        merged = {}
        for sid, sd in sorted((item for part in parts for item in part), key=lambda t: t[0]):
            merged.update(sd)
        return merged


def _first_id(ids: torch.Tensor, idx: torch.Tensor) -> int:
    """The first sample index of a micro-batch's `ids`. The schedule splits `idx` (a
    fresh arange) into views, whose storage offset is that index: known without an
    indexing op and a host read (on a GPU, a sync) on the critical path. Anything else (a
    copy) is read."""
    if ids._base is idx and ids.dim() == 1 and ids.numel():
        return ids.storage_offset()
    return int(ids[0])


def _no_label(name: str):
    return contextlib.nullcontext()


@contextlib.contextmanager
def labels_only_when_profiling():
    """Run a torch pipelining schedule with its per-micro-batch profiler labels off unless a
    profiler is recording.

    ScheduleGPipe opens `record_function(f"Forward {i}")` (and "Backward") around every
    micro-batch. With no profiler it records nothing, yet right after a chunk of compute
    its enter and exit took 35 and 65 us (its code was out of the caches, against 5 us in a
    warm loop): 0.1 ms per micro-batch and phase, on the pipeline's critical path
    (bench/RESULTS.md, 2026-12-02). Under a profiler the labels stay."""
    from torch.distributed.pipelining import schedules
    label = getattr(schedules, "record_function", None)
    if label is None or label is _no_label or torch._C._autograd._profiler_enabled():
        yield
        return
    schedules.record_function = _no_label
    try:
        yield
    finally:
        schedules.record_function = label
