"""What one training run needs, as plain data the loop (and every launched rank) receives.

The api layer builds a `TrainTask` from the user's compiled model and `fit` arguments; the
engine never imports the api. Everything here must survive cloudpickle, because launched
ranks receive the task that way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from bigtrain.engine.data import ArrayData


@dataclass(frozen=True)
class FitConfig:
    """Loop settings.

    Attributes:
        epochs: last epoch (exclusive), as Keras's `epochs`.
        batch_size: the GLOBAL batch: samples per optimizer step summed over all ranks, so
            results do not change with the number of ranks.
        shuffle: draw a new permutation every epoch (seeded by `seed` and the epoch).
        initial_epoch: first epoch to run (for resuming).
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
        accumulate_steps: micro-batches per optimizer step on each rank; k micro-steps equal
            one step with the same global batch (gradients synchronised on the last only).
        seed: seeds the epoch permutations.
        terminate_on_nan: stop (with the step and batch named) when the loss is NaN/Inf.
        nan_check_every: steps between the host checks for a non-finite loss.
        precision: "32", "bf16-mixed" or "16-mixed".
        steps_per_epoch: optimizer steps per epoch (None: one pass over the data). As in
            Keras, epochs then walk through one shuffled pass until it runs out; an epoch
            that meets the end of a pass stops there and the next epoch starts a new pass.
        validation_freq: validate after every N-th epoch (an int), or after the (1-based)
            epochs listed (a tuple).
        validation_batch_size: batch for validation (None: `batch_size`).
        validation_steps: validation batches per evaluation (None: all of them).
    """
    epochs: int = 1
    batch_size: int = 32
    shuffle: bool = True
    initial_epoch: int = 0
    verbose: int = 1
    accumulate_steps: int = 1
    seed: int = 0
    terminate_on_nan: bool = True
    nan_check_every: int = 50
    precision: str = "32"
    steps_per_epoch: int | None = None
    validation_freq: int | tuple = 1
    validation_batch_size: int | None = None
    validation_steps: int | None = None

    def __post_init__(self):
        for name in ("steps_per_epoch", "validation_batch_size", "validation_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        freq = self.validation_freq
        if isinstance(freq, list):
            object.__setattr__(self, "validation_freq", freq := tuple(freq))
        if not (isinstance(freq, int) and not isinstance(freq, bool) and freq >= 1) and not (
                isinstance(freq, tuple) and all(isinstance(e, int) for e in freq)):
            raise ValueError(f"validation_freq must be an integer >= 1 (validate every N "
                             f"epochs) or a list of epoch numbers, got {freq!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.epochs < 0 or self.initial_epoch < 0 or self.initial_epoch > self.epochs:
            raise ValueError(f"need 0 <= initial_epoch <= epochs, got initial_epoch="
                             f"{self.initial_epoch}, epochs={self.epochs}")
        if self.accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {self.accumulate_steps}")
        if self.precision not in ("32", "bf16-mixed", "16-mixed"):
            raise ValueError(f"precision must be '32', 'bf16-mixed' or '16-mixed', "
                             f"got {self.precision!r}")

    def validates_after(self, epoch: int) -> bool:
        """Whether validation runs after `epoch` (0-based), as Keras's validation_freq."""
        if isinstance(self.validation_freq, int):
            return (epoch + 1) % self.validation_freq == 0
        return epoch + 1 in self.validation_freq


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and when the loop writes resumable checkpoints (torch.distributed.checkpoint).

    Attributes:
        directory: folder that holds `step-XXXXXXXX/` checkpoints and the `latest` pointer.
        every_steps: also save after every N optimizer steps (0: only at epoch ends).
        at_epoch_end: save after every epoch.
        keep_last: how many complete checkpoints to keep (older ones are deleted).
        resume: "auto" continues from the newest complete checkpoint in `directory` (a fresh
            start when there is none), "never" starts fresh, or the path of one checkpoint
            (`.../step-00000040`) to continue from.

    Example:
        >>> CheckpointConfig("ckpt", every_steps=100, keep_last=2).resume
        'auto'
    """
    directory: str
    every_steps: int = 0
    at_epoch_end: bool = True
    keep_last: int = 3
    resume: str = "auto"

    def __post_init__(self):
        if not isinstance(self.directory, (str, os.PathLike)) or not os.fspath(self.directory):
            raise ValueError(f"checkpoint_dir must be a folder path, got {self.directory!r}")
        object.__setattr__(self, "directory", os.path.abspath(os.fspath(self.directory)))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"checkpoint_dir {self.directory} is a file, not a folder; pass a "
                             "folder path (it is created if missing)")
        if not isinstance(self.every_steps, int) or self.every_steps < 0:
            raise ValueError(f"checkpoint_every must be a number of steps >= 0 (0: epoch ends "
                             f"only), got {self.every_steps!r}")
        if not isinstance(self.keep_last, int) or self.keep_last < 1:
            raise ValueError(f"keep_last must be an integer >= 1, got {self.keep_last!r}")
        if self.every_steps == 0 and not self.at_epoch_end:
            raise ValueError("checkpoints are enabled but never written: set checkpoint_every=N "
                             "steps or keep checkpoint_at_epoch_end=True")
        resume = "auto" if self.resume is True else \
            "never" if self.resume is False or self.resume is None else self.resume
        if not isinstance(resume, (str, os.PathLike)) or not os.fspath(resume):
            raise ValueError(f"resume must be 'auto', 'never' or the path of a checkpoint, "
                             f"got {self.resume!r}")
        resume = os.fspath(resume)
        object.__setattr__(self, "resume", resume if resume in ("auto", "never")
                           else os.path.abspath(resume))


@dataclass
class TrainTask:
    """One training run.

    Attributes:
        module: the plain network (what strategies wrap).
        losses: one loss callable per model output: `loss(y_true, y_pred, sample_weight)`.
        loss_weights: weight of each output's loss in the total.
        metrics: per output, a list of Metric objects (reset by the loop).
        activations: per output, the activation deferred into the loss (applied before
            metrics and in predict), or None.
        make_optimizer: `make_optimizer(params) -> torch.optim.Optimizer`.
        optimizer_name: for reports.
        train: training data; val: validation data or None.
        config: loop settings.
        callbacks: Callback objects.
        run_dir: where the run record is written (rank 0), or None.
        checkpoint: resumable checkpoints (see CheckpointConfig), or None.
        watchdog: hang-watchdog settings for distributed runs (None: on, 120 s window).
        carry: what the previous fit of this model under the same compile left (a Carry),
            or None for a first fit.
        weights_in_place: the caller reads the trained weights from `module` itself (a fit
            in this process): a run that trained that very module, unsharded, in one process
            returns no copy of them (`FitResult.state_dict` None).
        rank_seed: a fit on several processes: the base of its ranks' random streams, drawn
            from the caller's (bigtrain.parallel.seeds); None: one process, whose stream
            continues.
    """
    module: nn.Module
    losses: list
    loss_weights: list[float]
    metrics: list[list]
    activations: list[Callable | None]
    make_optimizer: Callable
    optimizer_name: str
    train: ArrayData
    val: ArrayData | None
    config: FitConfig
    callbacks: list = field(default_factory=list)
    run_dir: str | None = None
    checkpoint: CheckpointConfig | None = None
    watchdog: Any = None  # a bigtrain.diagnose.watchdog.WatchdogConfig; None: the default
    carry: Any = None  # a bigtrain.engine.carry.Carry
    weights_in_place: bool = False
    rank_seed: int | None = None

    def metric_names(self) -> list[str]:
        return [m.name for ms in self.metrics for m in ms]

    def strategy_refusal(self, strategy) -> str | None:
        """Why this task cannot train exactly under `strategy` (a Strategy), or None; the
        planner leaves such strategies out of strategy="auto"."""
        return None

    def compute_loss(self, outputs, targets, sample_weight):
        """Total loss: the weighted sum of every output's loss (mean over the batch)."""
        if len(self.losses) == 1:
            return self.losses[0](targets, outputs, sample_weight) * self.loss_weights[0] \
                if self.loss_weights[0] != 1.0 else self.losses[0](targets, outputs, sample_weight)
        total = 0.0
        for loss, w, out, y in zip(self.losses, self.loss_weights, outputs, targets):
            total = total + w * loss(y, out, sample_weight)
        return total
