"""Building one rank's share of a global batch, and accumulating losses and metrics on the
device so that the loop talks to the host only where a number is shown."""
from __future__ import annotations

import contextlib

import torch

from bigtrain.engine.data import ArrayData
from bigtrain.engine.feed import local_rows, micro_split
from bigtrain.parallel.base import StepBatch
from bigtrain.parallel.microbatch import rows


def make_step_batch(data: ArrayData, gidx: torch.Tensor, shard: tuple[int, int],
                    accumulate: int, replicas: int, device) -> StepBatch:
    """This rank's micro-batches of the global batch `gidx`, with loss weights
    n_micro / n_global * replicas (so averaged gradients equal the global-batch gradient).

    `shard` is `(index, count)` (even split) or a `bigtrain.parallel.base.Shard` whose
    `bounds(len(gidx))` gives this rank's uneven `[start, stop)`."""
    lo, hi = local_rows(gidx.shape[0], shard)
    local = gidx if lo == 0 and hi == gidx.shape[0] else gidx[lo:hi]
    parts, weights = micro_split(local, gidx.shape[0], accumulate, replicas)
    return StepBatch(micro=[data.take(p, device) for p in parts], weights=weights)


def safe_loss(compute_loss):
    """Wrap `compute_loss` so an empty micro-batch gives a zero loss that still has a graph
    (the rank keeps joining gradient collectives) instead of NaN."""
    def loss_fn(outputs, targets, sample_weight):
        first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        if first.shape[0] == 0:
            flat = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            return sum(o.sum() for o in flat) * 0.0
        return compute_loss(outputs, targets, sample_weight)
    return loss_fn


def _stackable(first: tuple, y: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether (y, out) stacks onto the held (targets, outputs) `first` along the batch."""
    y0, out0 = first
    return (out.shape[1:] == out0.shape[1:] and y.shape[1:] == y0.shape[1:]
            and out.dtype == out0.dtype and y.dtype == y0.dtype)


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument context-manager factory for the requested precision."""
    if precision == "32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class Tally:
    """Running loss (sample-weighted) and metric states for one pass over the data.

    Which metrics of an output read raw scores and which need the deferred activation
    (`Metric.reads_scores_only`) is asked once, on the first non-empty batch of the pass.
    On a CPU, small outputs of built-in metrics (`Metric.batchable`) are held for up to
    `HOLD_STEPS` steps and read in one update: the same sums for a third of the ops, each
    of which costs a step its full time there. (An accelerator's ops overlap the step, and
    a captured graph may overwrite its outputs, so there every output is read at once;
    `hold=False` reads every step at once too, for batches that may share memory with a
    buffer their source refills.)
    """

    HOLD_STEPS = 16
    HOLD_BYTES = 1 << 18  # an output whose storage is larger is read at once (a small view
    # of a large tensor would keep all of it alive)

    def __init__(self, metrics: list[list], activations: list, device, hold: bool = True):
        self.metrics, self.activations = metrics, activations
        for ms in metrics:
            for m in ms:
                m.reset(device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0  # samples seen (a host number: no device op per step)
        self._losses: list = []  # (mean loss tensor, samples) per step, folded in state()
        # per output: (metrics fed the outputs as they are, metrics fed probabilities,
        # activation) once known; None before the output's first non-empty batch
        self._plans: list = [None] * len(metrics)
        self._any = any(metrics)
        hold = hold and torch.device(device).type == "cpu"
        self._hold = [hold and all(getattr(m, "batchable", False) for m in ms) for ms in metrics]
        self._held: list[list] = [[] for _ in metrics]  # (targets, outputs) not yet read

    def add(self, batch: StepBatch, outputs: list, mean_loss: torch.Tensor) -> None:
        n = 0
        for (x, y, _), out in zip(batch.micro, outputs):
            n += rows(y if y is not None else x)
            if self._any:
                self.update_metrics(y, out)
        if mean_loss.requires_grad:
            mean_loss = mean_loss.detach()
        self._losses.append((mean_loss, n))  # summed when `state()` is read
        self.count += n
        if len(self._losses) >= 1024:  # bound the pending list on long epochs
            self.state()

    def update_metrics(self, targets, outputs) -> None:
        if outputs is None or targets is None:
            return
        outs = outputs if isinstance(outputs, tuple) else (outputs,)
        ys = targets if isinstance(targets, tuple) else (targets,)
        for i, (ms, out, y) in enumerate(zip(self.metrics, outs, ys)):
            if not ms or not out.shape[0]:
                continue
            mask = getattr(out, "_keras_mask", None)  # (B, T) time-step mask, as Keras
            if out.requires_grad:
                out = out.detach()  # metrics only read values: no graph
            if mask is not None:  # Keras leaves masked steps out of the metrics
                out, y = out[mask], y[mask]
            if self._hold[i] and out.untyped_storage().nbytes() <= self.HOLD_BYTES:
                if self._held[i] and not _stackable(self._held[i][0], y, out):
                    self._read_held(i)  # e.g. a new sequence length: read what is held
                held = self._held[i]
                held.append((y, out))
                if len(held) >= self.HOLD_STEPS:
                    self._read_held(i)
            else:
                self._update(i, y, out)

    def _update(self, i: int, y, out) -> None:
        plan = self._plans[i] or self._plan(i, y, out)
        for m in plan[0]:
            m.update(y, out)  # argmax metrics: softmax changes nothing
        if plan[1]:
            probs = plan[2](out.float())
            for m in plan[1]:
                m.update(y, probs)

    def _read_held(self, i: int) -> None:
        held, self._held[i] = self._held[i], []
        if len(held) == 1:
            self._update(i, *held[0])
        elif held:
            self._update(i, torch.cat([y for y, _ in held]), torch.cat([o for _, o in held]))

    def _plan(self, i: int, y, out) -> tuple:
        act = self.activations[i]
        as_is = [m for m in self.metrics[i] if act is None or m.reads_scores_only(y, out)]
        plan = (as_is, [m for m in self.metrics[i] if all(m is not a for a in as_is)], act)
        self._plans[i] = plan
        return plan

    def state(self) -> torch.Tensor:
        for i in range(len(self._held)):
            self._read_held(i)
        if self._losses:
            losses = torch.stack([loss for loss, _ in self._losses]).double()
            weights = torch.tensor([float(n) for _, n in self._losses], dtype=torch.float64,
                                   device=losses.device)
            self.loss_sum += (losses * weights).sum()
            self._losses = []
        parts = [self.loss_sum.reshape(1),
                 torch.tensor([float(self.count)], dtype=torch.float64, device=self.loss_sum.device)]
        parts += [m.state for ms in self.metrics for m in ms]
        return torch.cat(parts)

    def logs(self, state: torch.Tensor, prefix: str = "") -> dict[str, float]:
        """Keras-style logs from a (possibly all-reduced) `state()`."""
        count = float(state[1])
        out = {prefix + "loss": float(state[0]) / count if count else float("nan")}
        offset = 2
        for ms in self.metrics:
            for m in ms:
                out[prefix + m.name] = m.result(state[offset:offset + m.size])
                offset += m.size
        return out
