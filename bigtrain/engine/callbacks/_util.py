"""Utilities shared by the callbacks: monitored-quantity comparison, learning rates of an
optimizer's param groups, log formatting, and "am I rank 0" for messages."""
from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.distributed as dist

from bigtrain.engine.callbacks.rank0_weights import refresh_host_masters, share_weights

# Monitored names that improve upward (Keras: "acc"/"auc" in the name means maximise).
_MAXIMISED = ("acc", "auc", "precision", "recall", "f1", "fmeasure", "iou")


def resolve_mode(monitor: str, mode: str) -> str:
    """"min" or "max" for `monitor`; "auto" picks "max" for accuracy/AUC-like names.

    Example:
        >>> resolve_mode("val_accuracy", "auto"), resolve_mode("val_loss", "auto")
        ('max', 'min')
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}.")
    if mode != "auto":
        return mode
    name = monitor.lower()
    return "max" if any(key in name for key in _MAXIMISED) else "min"


def check_auto_monitor(monitor: str, mode: str, params: dict, who: str) -> None:
    """Keras's mode="auto" rule: the direction of `monitor` must be known, so it must be the
    loss or one of the fit's metrics (`params["metrics"]`, with or without "val_")."""
    known = params.get("metrics")
    name = monitor.removeprefix("val_")
    if mode != "auto" or known is None or name == "loss" or monitor in known or name in known:
        return
    raise ValueError(f"{who} callback received monitor={monitor!r}, which is neither the loss "
                     f"nor one of this fit's metrics {list(known)}, so whether it should be "
                     "maximized or minimized is unknown. Pass mode='max' to keep the highest "
                     "value or mode='min' to keep the lowest, or fix the monitor name.")


def is_improvement(current: float, reference: float, mode: str, min_delta: float = 0.0) -> bool:
    """True when `current` beats `reference` by more than |min_delta| in direction `mode`."""
    if current is None or math.isnan(current):
        return False
    delta = abs(min_delta)
    return current < reference - delta if mode == "min" else current > reference + delta


def worst_value(mode: str) -> float:
    """The starting 'best' value: anything finite improves on it."""
    return math.inf if mode == "min" else -math.inf


def monitor_value(logs: dict | None, monitor: str, who: str) -> float | None:
    """logs[monitor] as a float, or None with a warning naming the keys that do exist."""
    logs = logs or {}
    if monitor not in logs:
        warnings.warn(f"{who}: the monitored quantity {monitor!r} is not in the logs "
                      f"(available: {sorted(logs)}); check the monitor name, and pass "
                      f"validation data to fit() for 'val_*' names.", RuntimeWarning,
                      stacklevel=3)
        return None
    return float(logs[monitor])


def get_lrs(optimizer) -> list[float]:
    """The learning rate of each param group, as floats."""
    if not all("lr" in g for g in optimizer.param_groups):
        raise ValueError(f"the optimizer of this process ({type(optimizer).__name__}) has no "
                         "learning rate to read or change: under a parameter server the "
                         "servers hold the real optimizer. Drop LearningRateScheduler / "
                         "ReduceLROnPlateau, or train with a data-parallel strategy such as "
                         "strategy='ddp'.")
    return [float(g["lr"]) for g in optimizer.param_groups]


def set_lrs(optimizer, lrs: list[float]) -> None:
    """Set each param group's learning rate, in place (tensor learning rates stay tensors,
    as capturable/fused optimizers require)."""
    groups = optimizer.param_groups
    if len(lrs) != len(groups):
        raise ValueError(f"got {len(lrs)} learning rates for {len(groups)} param groups.")
    for group, lr in zip(groups, lrs):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = float(lr)


def is_main_process() -> bool:
    """True on rank 0 of an initialised process group, or when there is none."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def format_value(value) -> str:
    """Keras-style: 4 decimals, scientific notation for very small or large numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    v = float(value)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.4e}"
    return f"{v:.4f}"


def format_logs(logs: dict | None) -> str:
    """'loss: 0.1234 - accuracy: 0.9100 - val_loss: ...' (insertion order of the logs)."""
    return " - ".join(f"{k}: {format_value(v)}" for k, v in (logs or {}).items())


def rank0_only_hooks(callbacks, *hooks: str) -> bool:
    """Whether a callback that runs on rank 0 alone could change the learning rate, the
    weights or `model.stop_training` in one of `hooks` (any hook when none is named): those
    that run user code (`runs_user_code`: a user's own callback, LambdaCallback's functions,
    TerminateOnNaN's stop). Every rank must get the same answer: pass the fit's whole list."""
    from bigtrain.engine.callbacks.base import _overrides
    return any(c.main_process_only and c.runs_user_code
               and (not hooks or _overrides(c, *hooks)) for c in callbacks)


def batch_logs_wanted(callbacks) -> bool:
    """Whether a callback of the fit that runs user code reads per-batch logs (a batch-end
    hook that does not decline them). On several ranks such logs must be the global batch's,
    as one process's are: every rank then all-reduces its running sums after each step, so
    every rank must get the same answer: pass the fit's whole list. bigtrain's own readers
    (the run record's step losses, TensorBoard's batch scalars) take rank 0's share and
    spare the per-step all-reduce."""
    from bigtrain.engine.callbacks.base import _overrides
    return any(c.runs_user_code and _overrides(c, "on_train_batch_end", "on_batch_end")
               and c.wants_batch_logs is not False for c in callbacks)


class Rank0Changes:
    """Keeps every rank on what rank-0-only callbacks change: each param group's learning
    rate, `model.stop_training` and the weights (`set_weights`, see rank0_weights), and lets
    such a callback read split weights (`gather`).

    `share()` is a collective that every rank calls at the same points of the loop, right
    after the hooks that may run a rank-0-only user callback: one all-reduce (sum) of
    3 + groups float64 values, rank 0 adding its own and the other ranks zeros, so that
    every rank ends with rank 0's values exactly; when rank 0's hooks set weights,
    `share_weights` then loads them on every rank.

    Reading split weights on demand: while rank 0 runs such a hook, the other ranks are
    already waiting in that all-reduce. A `gather` on rank 0 sends the same all-reduce with
    its "gather" slot set; the other ranks see it, join the strategy's gather of the full
    state, and wait again; rank 0's own share (slot clear) lets them go on. A hook that reads
    no weights costs nothing beyond the share the loop makes anyway.

    Args:
        all_reduce: the strategy's all-reduce over the training ranks.
        is_main: this rank runs the rank-0-only hooks.
        optimizer: the optimizer that steps (its param_groups hold the rates).
        model: the object the callbacks see as `self.model`.
        device: where the collective's tensor lives.
    """

    def __init__(self, all_reduce, is_main: bool, optimizer, model, device):
        self.all_reduce, self.is_main = all_reduce, is_main
        self.optimizer, self.model, self.device = optimizer, model, device
        self.serving = True  # the other ranks wait in a share after rank 0's hooks

    def _lrs(self) -> list[float]:
        groups = self.optimizer.param_groups  # none under a parameter server's workers
        return [float(g["lr"]) for g in groups] if all("lr" in g for g in groups) else []

    def _trainable(self) -> int:
        """How many of the optimizer's parameters train now (a layer's `trainable`)."""
        return sum(p.requires_grad for g in self.optimizer.param_groups for p in g["params"])

    def _exchange(self, stop: bool, new_weights: bool, gather: bool, lrs: list[float]):
        """Rank 0's values for every rank; the last three slots, which every rank fills,
        check that all ranks train the same weights: (this rank's count of trainable
        parameters, rank 0's count, 1), summed."""
        trainable = float(self._trainable())
        values = torch.tensor([float(stop), float(new_weights), float(gather), *lrs,
                               trainable, trainable, 1.0], dtype=torch.float64,
                              device=self.device)
        if not self.is_main:
            values[:-3].zero_()
            values[-2] = 0.0
        values = self.all_reduce(values).tolist()
        counts, values = values[-3:], values[:-3]
        if counts[0] != counts[1] * counts[2]:  # every rank sees the same sums: all raise
            raise RuntimeError(
                "a callback changed which weights train (a layer's trainable) during a fit "
                f"on {int(counts[2])} processes: callbacks run on rank 0 only, so the other "
                "ranks would still train those weights and their gradient all-reduces would "
                "no longer match. Set trainable before fit (then compile again), or train "
                "the two phases as two fits")
        return values

    def gather(self, live) -> dict[str, torch.Tensor]:
        """Rank 0, inside a rank-0-only hook: the full state of `live` (the fit's
        LiveWeights), gathered with every rank (they join from their wait in `share`)."""
        if not (self.is_main and self.serving):
            raise RuntimeError("no other rank waits for this read of the weights")
        self._exchange(False, False, True, [0.0] * len(self._lrs()))
        return live.strategy.full_state_dict(live.module)

    def share(self, load_weights: bool = True) -> None:
        """Every rank, after the hooks: rank 0's stop, rates and weights for everyone.
        `load_weights=False` (after on_train_end) leaves rank 0's new weights as the fit's
        result instead of loading them."""
        lrs, live = self._lrs(), self.model.live
        new_weights = live is not None and live.final_state is not None
        values = self._exchange(bool(self.model.stop_training), new_weights, False, lrs)
        while values[2]:  # rank 0's hook reads the weights: join its gather, wait again
            live.strategy.full_state_dict(live.module)
            values = self._exchange(False, False, False, lrs)
        self.model.stop_training = bool(values[0])
        if values[3:] != lrs:
            set_lrs(self.optimizer, values[3:])
        if values[1] and load_weights:
            share_weights(live, self.all_reduce, self.is_main, self.device)
            refresh_host_masters(self.optimizer)

    @contextlib.contextmanager
    def train_end(self, finished: bool):
        """Around on_train_end: after a finished fit every rank shares once more (rank 0's
        hook may read split weights); after a failure no rank waits for rank 0's reads."""
        self.serving = finished
        try:
            yield
        finally:
            self.serving = True
        if finished:
            self.share(load_weights=False)
