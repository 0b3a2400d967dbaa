"""Building one rank's share of a global batch, and accumulating losses and metrics on the
device so that the loop talks to the host only where a number is shown."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

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
    (the rank keeps joining gradient collectives) instead of NaN, and a module that returns
    a dict is stopped at its first batch with the fix named (`dict_output_error`)."""
    def loss_fn(outputs, targets, sample_weight):
        if isinstance(outputs, Mapping):
            raise dict_output_error(outputs)
        first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        if first.shape[0] == 0:
            flat = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            return sum(o.sum() for o in flat) * 0.0
        return compute_loss(outputs, targets, sample_weight)
    return loss_fn


def dict_output_error(outputs: Mapping) -> TypeError:
    """What fit says when the module's forward returns a dict (Hugging Face style) and
    compile's loss is not a dict by key (`bigtrain.api.keyed_outputs` trains it by key).

    Keras gives a single loss to every output; bigtrain cannot know a module's keys at
    compile, so it asks for them."""
    keys = list(outputs)
    if not keys:
        return TypeError("the model's forward returned an empty dict; return a tensor, or a "
                         "dict of tensors with compile(loss={key: loss, ...})")
    example = ", ".join(f"{k!r}: ..." for k in keys)
    return TypeError(
        f"the model's forward returned a dict with keys {keys}, but compile's loss is not a "
        f"dict by key: compile with loss={{{example}}} (one loss per key to train; a key "
        "left out is not trained on), and pass y as a dict with the same keys")


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument context-manager factory for the requested precision."""
    if precision == "32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class _Ring:
    """Copies of up to `STEPS` steps' (targets, outputs) of one output, in two buffers
    allocated once, so that the metrics read them in one update."""

    STEPS = 16

    def __init__(self, y: torch.Tensor, out: torch.Tensor):
        self.y = torch.empty((self.STEPS, *y.shape), dtype=y.dtype, device=y.device)
        self.out = torch.empty((self.STEPS, *out.shape), dtype=out.dtype, device=out.device)
        self._slots = list(zip(self.y.unbind(0), self.out.unbind(0)))
        self.held = 0
        # what a step's (targets, outputs) must be to go in: (shapes, dtypes)
        self.key = (y.shape, out.shape, y.dtype, out.dtype)

    def fits(self, y: torch.Tensor, out: torch.Tensor) -> bool:
        return (y.shape, out.shape, y.dtype, out.dtype) == self.key

    def put(self, y: torch.Tensor, out: torch.Tensor) -> bool:
        """Copy one step in; True when the ring is full."""
        slot_y, slot_out = self._slots[self.held]
        slot_y.copy_(y)
        slot_out.copy_(out)
        self.held += 1
        return self.held == self.STEPS

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held steps as one batch (views of the buffers: read before the next `put`)."""
        k, self.held = self.held, 0
        return self.y[:k].flatten(0, 1), self.out[:k].flatten(0, 1)


def _output_weights(sample_weight, i: int, outputs: int):
    """Output `i`'s sample weights: its column of per-output weights (B, outputs), as the
    output's loss reads them (`OutputLoss`), else the batch's own (every output alike)."""
    if sample_weight is not None and outputs > 1 and sample_weight.dim() == 2:
        return sample_weight[:, i]
    return sample_weight


def _mask_scaled(metrics: list) -> bool:
    """Whether an output's weighted metrics read mask-scaled weights (`Metric.mask_scaled`:
    its loss's reduction decides)."""
    return all(getattr(m, "mask_scaled", True) for m in metrics if m.weighted)


def _masked_weights(sample_weight, mask, scaled: bool = True):
    """The weights Keras's weighted metrics give the time steps a (B, T) mask keeps, from
    (B,), (B, T) or (B, T, 1) sample weights: with `scaled`, a kept step's weight times
    B*T / (steps the batch keeps). Keras's loss (reduction "sum_over_batch_size") scales
    the batch's weights so, in place (`apply_mask` in keras/src/losses/loss.py), before the
    metrics read the same tensor: a batch that keeps few of its steps counts more in the
    pass's metrics. Under reduction "sum" (or "mean_with_sample_weight") it does not."""
    w = sample_weight
    if w.dim() == mask.dim() + 1 and w.shape[-1] == 1:
        w = w.squeeze(-1)  # (B, T, 1), as Keras's squeeze_or_expand_to_same_rank
    if w.dim() > mask.dim() or tuple(w.shape) != tuple(mask.shape[:w.dim()]):
        raise ValueError(f"sample_weight of shape {tuple(sample_weight.shape)} does not fit a "
                         f"masked sequence output of {tuple(mask.shape)} (batch, timesteps): "
                         "give one weight per sample (batch,) or per time step "
                         "(batch, timesteps)")
    w = w.reshape(*w.shape, *[1] * (mask.dim() - w.dim())).expand(mask.shape)[mask]
    if not scaled:
        return w  # (N,): one per kept step
    return w * (mask.numel() / mask.sum().clamp(min=1))  # (N,): one per kept step


def _feed(metric, y, out, sample_weight) -> None:
    """`metric.update`, with the sample weights for a weighted metric only (a metric of
    the user's own may take no `sample_weight`)."""
    if metric.weighted:
        metric.update(y, out, sample_weight=sample_weight)
    else:
        metric.update(y, out)


class Tally:
    """Running loss (sample-weighted) and metric states for one pass over the data.

    Which metrics of an output read raw scores and which need the deferred activation
    (`Metric.reads_scores_only`) is asked once, on the first non-empty batch of the pass.

    A step keeps none of its tensors: its loss is copied into a slot of a buffer allocated
    once (summed `LOSS_SLOTS` at a time, and read by the loop's loss check through
    `first_non_finite`), and on a CPU small outputs of built-in metrics
    (`Metric.batchable`) are copied into a ring allocated once (`_Ring`) and read
    `_Ring.STEPS` steps at a time: the same sums for a fraction of the ops, each of which
    costs a small step its full time there. Keeping the steps' own
    tensors instead (a list of losses, outputs stacked later) held heap memory between
    steps, and the allocator then returned a large step's buffers to the system and
    faulted them in again: 3-7 % of fit's time at batch 256 (bench/RESULTS.md). An
    accelerator's ops overlap the step, so there every output is read at once.
    """

    HOLD_BYTES = 1 << 18  # a larger output is read at once, not copied
    LOSS_SLOTS = 64  # steps' losses held before they are summed

    def __init__(self, metrics: list[list], activations: list, device,
                 keep_step_losses: bool = False):
        self.metrics, self.activations = metrics, activations
        for ms in metrics:
            for m in ms:
                m.reset(device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0  # samples seen (a host number: no device op per step)
        self.steps = 0  # steps added in this pass
        # each step's mean loss is copied into a slot (one op); `_fold_losses` sums them
        self._loss_buf = torch.empty(self.LOSS_SLOTS, dtype=torch.float64, device=device)
        self._loss_slots = self._loss_buf.unbind(0)
        self._loss_rows: list[int] = []  # samples behind each held loss
        # with keep_step_losses, each fold's losses are kept (a device copy, no host read)
        # for `step_losses`: the run record's per-step losses without a sync per step
        self._kept: list[torch.Tensor] | None = [] if keep_step_losses else None
        # the pass's first step whose loss is not finite (inf: none yet), kept when asked
        self.watch_finite = False
        self._first_bad = torch.full((), float("inf"), dtype=torch.float64, device=device)
        self._first_bad_loss = torch.zeros((), dtype=torch.float64, device=device)  # its value
        # per output: (metrics fed the outputs as they are, metrics fed probabilities,
        # activation) once known; None before the output's first non-empty batch
        self._plans: list = [None] * len(metrics)
        self._any = any(metrics)
        cpu = torch.device(device).type == "cpu"
        # (an output with weighted metrics is read at once: the ring holds no sample weights)
        self._hold = [cpu and all(getattr(m, "batchable", False) and not m.weighted for m in ms)
                      for ms in metrics]
        self._rings: list[_Ring | None] = [None] * len(metrics)

    def add(self, batch: StepBatch, outputs: list, mean_loss: torch.Tensor) -> None:
        n = 0
        for (x, y, sw), out in zip(batch.micro, outputs):
            n += rows(y if y is not None else x)
            if self._any:
                self.update_metrics(y, out, sw)
        if mean_loss.requires_grad:
            mean_loss = mean_loss.detach()
        self._loss_slots[len(self._loss_rows)].copy_(
            mean_loss if mean_loss.dim() == 0 else mean_loss.reshape(()))
        self._loss_rows.append(n)
        self.count += n
        self.steps += 1
        if len(self._loss_rows) == self.LOSS_SLOTS:
            self._fold_losses()

    def add_one(self, y: torch.Tensor, out, mean_loss: torch.Tensor) -> None:
        """`add` for a step of one micro-batch without sample weights: targets `y` (a
        tensor), its outputs `out` (detached) and mean loss (detached). An output that fits
        its ring goes straight in, with the checks `update_metrics` would make on it made
        inline (no call per check); any other goes through `update_metrics`."""
        ring = self._rings[0] if self._rings else None
        if (ring is not None and type(out) is torch.Tensor and not out.requires_grad
                and (y.shape, out.shape, y.dtype, out.dtype) == ring.key
                and getattr(out, "_keras_mask", None) is None):
            slot_y, slot_out = ring._slots[ring.held]  # as `_Ring.put`
            slot_y.copy_(y)
            slot_out.copy_(out)
            ring.held += 1
            if ring.held == ring.STEPS:
                self._read_held(0)
        elif self._any:
            self.update_metrics(y, out, None)
        n, held = y.shape[0], self._loss_rows
        self._loss_slots[len(held)].copy_(
            mean_loss if mean_loss.dim() == 0 else mean_loss.reshape(()))
        held.append(n)
        self.count += n
        self.steps += 1
        if len(held) == self.LOSS_SLOTS:
            self._fold_losses()

    def _fold_losses(self) -> None:
        """Add the held losses, weighted by their samples, into `loss_sum` (and note the
        first non-finite one when `watch_finite`)."""
        k = len(self._loss_rows)
        if not k:
            return
        losses = self._loss_buf[:k]
        if self.watch_finite:
            steps = torch.arange(self.steps - k, self.steps, dtype=torch.float64,
                                 device=losses.device)
            ranked = torch.where(torch.isfinite(losses), float("inf"), steps)
            bad, value = ranked.min(), losses[ranked.argmin()]  # this fold's first bad loss
            torch.where(bad < self._first_bad, value, self._first_bad_loss,
                        out=self._first_bad_loss)
            torch.minimum(self._first_bad, bad, out=self._first_bad)
        if self._kept is not None:
            self._kept.append(losses.clone())
        rows = torch.tensor(self._loss_rows, dtype=torch.float64, device=losses.device)
        self.loss_sum += (losses * rows).sum()
        self._loss_rows = []

    def first_non_finite(self) -> float:
        """The first step of this pass (0-based, counting `add` calls) whose loss was NaN or
        Inf; inf when none was. Set `watch_finite` before the first step. Reads the device."""
        self._fold_losses()
        return float(self._first_bad)

    def first_non_finite_loss(self) -> torch.Tensor:
        """That step's loss (NaN, Inf or -Inf; 0 when none was), on the device."""
        self._fold_losses()
        return self._first_bad_loss

    def step_losses(self) -> list[float]:
        """Each step's mean loss in this pass, in order (made with keep_step_losses=True;
        else []). Reads the device once."""
        self._fold_losses()
        if not self._kept:
            return []
        if len(self._kept) > 1:  # one tensor from now on: a later call reads it alone
            self._kept = [torch.cat(self._kept)]
        return self._kept[0].tolist()

    def update_metrics(self, targets, outputs, sample_weight=None) -> None:
        """Add a batch's outputs to the metrics; `sample_weight` (B,), (B, T) or, with
        several outputs, (B, outputs) reaches the weighted metrics (compile's
        `weighted_metrics`) only."""
        if outputs is None or targets is None:
            return
        outs = outputs if isinstance(outputs, tuple) else (outputs,)
        ys = targets if isinstance(targets, tuple) else (targets,)
        for i, (ms, out, y) in enumerate(zip(self.metrics, outs, ys)):
            if not ms or not out.shape[0]:
                continue
            sw = _output_weights(sample_weight, i, len(self.metrics))
            mask = getattr(out, "_keras_mask", None)  # (B, T) time-step mask, as Keras
            if out.requires_grad:
                out = out.detach()  # metrics only read values: no graph
            if out.dtype in (torch.float16, torch.bfloat16):  # mixed precision's output:
                out = out.float()  # Keras's metrics compute in float32, as its losses do
            if mask is not None:  # Keras leaves masked steps out of the metrics
                out, y = out[mask], y[mask]
                sw = None if sw is None else _masked_weights(sw, mask, _mask_scaled(ms))
            if self._hold[i] and out.numel() * out.element_size() <= self.HOLD_BYTES:
                ring = self._rings[i]
                if ring is None:
                    ring = self._rings[i] = _Ring(y, out)
                if ring.fits(y, out):
                    if ring.put(y, out):
                        self._read_held(i)
                    continue
                self._read_held(i)  # another shape (the last, smaller batch): read at once
            self._update(i, y, out, sw)

    def _update(self, i: int, y, out, sw=None) -> None:
        plan = self._plans[i] or self._plan(i, y, out)
        for m in plan[0]:
            _feed(m, y, out, sw)  # argmax metrics: softmax changes nothing
        if plan[1]:
            probs = plan[2](out.float())
            for m in plan[1]:
                _feed(m, y, probs, sw)

    def _read_held(self, i: int) -> None:
        ring = self._rings[i]
        if ring is not None and ring.held:
            self._update(i, *ring.take())

    def _plan(self, i: int, y, out) -> tuple:
        act = self.activations[i]
        as_is = [m for m in self.metrics[i] if act is None or m.reads_scores_only(y, out)]
        plan = (as_is, [m for m in self.metrics[i] if all(m is not a for a in as_is)], act)
        self._plans[i] = plan
        return plan

    def state(self) -> torch.Tensor:
        for i in range(len(self._rings)):
            self._read_held(i)
        self._fold_losses()
        parts = [self.loss_sum.reshape(1),
                 torch.tensor([float(self.count)], dtype=torch.float64, device=self.loss_sum.device)]
        parts += [m.state for ms in self.metrics for m in ms]
        return torch.cat(parts)

    def running_logs(self) -> dict[str, float]:
        """Keras's per-batch logs: the loss and metrics over this pass so far (this rank's
        batches). Reads the device, and the held steps at once: call it only for a
        callback that reads them."""
        return self.logs(self.state())

    def seed(self, state: list[float]) -> bool:
        """Add a `state()` taken earlier (an interrupted run's, up to its checkpoint) so this
        pass's logs cover the whole epoch; False when its layout does not match."""
        size = 2 + sum(m.size for ms in self.metrics for m in ms)
        if len(state) != size:
            return False
        t = torch.tensor(state, dtype=torch.float64, device=self.loss_sum.device)
        self.loss_sum += t[0]
        self.count += int(round(float(t[1])))
        offset = 2
        for ms in self.metrics:
            for m in ms:
                m.state.add_(t[offset:offset + m.size].to(m.state.dtype))
                offset += m.size
        return True

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
