"""One rank's share of a pipeline: its stages, the torch.distributed.pipelining schedule that
runs them, tied-weight groups, the per-step broadcasts of loss and outputs, the timing of
the stages' compute (pipeline bubble) and the gathering of the full state.

`Pipeline` (bigtrain.parallel.pipeline) decides the cut and the schedule; this module runs
it. See that module's docstring for the data, loss and tied-weight conventions.
"""
from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Sequence

import torch
import torch.distributed as dist
from torch import nn

from bigtrain.parallel.base import StepBatch
from bigtrain.parallel.comm import all_reduce_grads, broadcast_params
from bigtrain.parallel.mesh import ParallelDims
from bigtrain.parallel.slow_ranks import slowed

if TYPE_CHECKING:  # pragma: no cover
    from bigtrain.parallel.pipeline import Pipeline

#: schedules that hold several stages per rank
MULTI_STAGE = ("interleaved", "zero_bubble")
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
        # a stage of view layers only (Flatten, Reshape) would hand the schedule a view of its
        # input; zero-bubble schedules detach stage outputs in place, which views refuse
        return x.clone() if isinstance(x, torch.Tensor) and x._is_view() else x

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """This stage's tensors under the original model's key names."""
        out = {}
        for name, layer in zip(self.names, self.layers):
            for k, v in layer.state_dict().items():
                out[f"{name}.{k}"] = v
        return out


class PipelineRuntime:
    """Per-rank pipeline state: mesh groups, local stages, schedule, tied-weight groups."""

    def __init__(self, strategy: "Pipeline", env, dims: ParallelDims):
        self.s, self.env, self.dims = strategy, env, dims
        self.mesh = dims.build_mesh(env.device.type)
        me = dims.coords(env.rank)
        self.pp_rank, self.dp_idx, self.tp_idx = me["pp"], me["dp"], me["tp"]
        self.pp_group = self.mesh["pp"].get_group()
        self.dp_group = self.mesh["dp"].get_group()
        self.last_rank = dims.rank_of(pp=dims.pp - 1, dp=self.dp_idx, tp=self.tp_idx)
        self.ties: list[tuple[list[nn.Parameter], object]] = []
        self._ctx = None
        self.micro_rows: int | None = strategy.micro_rows  # samples per micro-batch
        self._pad_row: torch.Tensor | None = None  # one real input row, for padding
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
        stage = self.pstages if self.s.schedule in MULTI_STAGE else self.pstages[0]
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
        """The schedule's loss: `ids` are the micro-batch's sample indices (see docstring);
        ids >= n are padding rows (always at the end), which the loss does not read."""
        if self._ctx is None:  # forward-only pass: schedules still ask the last stage
            return output.new_zeros(())
        y, sw, compute_loss, n, wsum, record = self._ctx
        t0 = self._clock()
        first = int(ids[0])
        real = min(max(n - first, 0), ids.numel())  # rows of this micro-batch that are data
        if real == 0:  # all padding: a zero loss that keeps the graph (zero gradient)
            loss = output.float().sum() * 0.0
        else:
            ids, output = ids[:real], output[:real]
            loss = compute_loss(output, _take(y, ids), None if sw is None else sw[ids])
        if self._busy is not None:
            self._busy[0] += self._clock() - t0
        # keyed by first sample: the schedule's one-off metadata pass (on placeholder
        # activations) calls this too, and the real micro-batch overwrites its entry
        record[first] = (loss.detach().float(), real)
        return loss * (real / n * wsum) if real else loss

    def step(self, batch: StepBatch, compute_loss, autocast):
        x = _cat([_single(m[0]) for m in batch.micro])
        y = _cat([m[1] for m in batch.micro])
        sws = [m[2] for m in batch.micro]
        sw = None if any(w is None for w in sws) else torch.cat(sws)
        n = x.shape[0]
        rows = self._micro_rows(n)
        if n > rows * self.s.microbatches:
            raise ValueError(f"this replica's batch of {n} samples exceeds the pipeline's "
                             f"{self.s.microbatches} micro-batches of {rows} samples set by "
                             f"the first step; keep the batch size of the run")
        x = self._pad(x, rows * self.s.microbatches)
        record: dict[int, tuple[torch.Tensor, int]] = {}
        self._ctx = (y, sw, compute_loss, n, float(sum(batch.weights)), record)
        idx = torch.arange(x.shape[0], device=x.device)
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
        loss = None
        if has_last:  # mean over the replica's real samples (0 for an empty share)
            loss = (sum(l * c for l, c in record.values()) / n if n
                    else torch.zeros((), device=out.device))
        self.s.mark("loss and output broadcast", phase="comm")
        out, loss = self._broadcast_result(out if has_last else None, loss)
        sizes = [_single(mb[0]).shape[0] for mb in batch.micro]
        return list(torch.split(out[:n], sizes)), loss

    def _micro_rows(self, n: int) -> int:
        """Samples per micro-batch: the strategy's (from the run's batch size in `validate`),
        else fixed by the first batch seen (n samples)."""
        if self.micro_rows is None:
            self.micro_rows = max(1, -(-n // self.s.microbatches))
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
        """Forward through all stages (no backward), in chunks of M micro-batches of
        `micro_rows` samples; the last chunk is padded (see docstring)."""
        x = _single(x)
        n = x.shape[0]
        chunk = self._micro_rows(n) * self.s.microbatches
        first = any(st.is_first for st in self.pstages)
        last = any(st.is_last for st in self.pstages)
        ids = torch.arange(chunk, device=x.device)
        outs = []
        for start in range(0, n, chunk) if n else [0]:
            part = x[start:start + chunk]
            out = self.schedule.eval(*((self._pad(part, chunk),) if first else ()),
                                     target=ids if last else None)
            outs.append(self._broadcast_result(out if last else None)[0][:part.shape[0]])
        return torch.cat(outs)

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
