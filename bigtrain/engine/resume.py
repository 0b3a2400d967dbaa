"""Where a fit starts: from the checkpoint `fit(checkpoint_dir=...)` selects, if any, and
how far the loop has come (`Progress`: optimizer steps, batches of the epoch to skip)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from bigtrain.engine.checkpoint import Checkpointer
from bigtrain.engine.data import sample_count


@dataclass
class Progress:
    """Optimizer steps done in all, and batches of the current epoch to skip (a run that
    resumes mid-epoch skips the batches the checkpoint already trained on)."""
    step: int = 0
    skip: int = 0
    checkpointer: Checkpointer | None = None

    def after_step(self, epoch: int, batch: int, steps_per_epoch: int) -> None:
        self.step += 1
        if self.checkpointer is not None:
            self.checkpointer.after_step(epoch, batch, steps_per_epoch, self.step)


def resume(task, strategy, module, optimizer, result) -> tuple[Progress, int]:
    """(progress, first epoch): from the checkpoint `task.checkpoint` selects, if any. When
    that checkpoint's run already finished the epochs asked for, `result` gets its recorded
    History and the loop has nothing to train."""
    cfg = task.config
    if task.checkpoint is None:
        return Progress(), cfg.initial_epoch
    info = {"batch_size": cfg.batch_size, "samples": sample_count(task.train), "seed": cfg.seed,
            "shuffle": cfg.shuffle, "strategy": strategy.name,
            "steps_per_epoch": cfg.steps_per_epoch}
    ckpt = Checkpointer(task.checkpoint, strategy, module, optimizer, info, record=result)
    ckpt.check_writable()  # a folder it cannot save into fails now, not at the first save
    start = ckpt.restore()
    if start is None:
        return Progress(checkpointer=ckpt), cfg.initial_epoch
    if start.epoch >= cfg.epochs:
        recorded = ckpt.history()
        result.history, result.epochs = recorded["history"], recorded["epochs"]
        ckpt.prior, ckpt.record = recorded, None  # a later save keeps it once
        if strategy.env.is_main:
            warnings.warn(finished_note(task.checkpoint.directory, start.epoch, cfg.epochs),
                          UserWarning, stacklevel=2)
    elif strategy.env.is_main and cfg.verbose:
        print(f"Resuming from checkpoint step {start.step} (epoch {start.epoch + 1}, "
              f"batch {start.batch})", flush=True)
    return Progress(start.step, start.batch, ckpt), start.epoch


def finished_note(directory: str, done: int, epochs: int) -> str:
    """What fit says when checkpoint_dir holds a run that already did all its epochs."""
    return (f"checkpoint_dir {directory!r} holds a run that already finished {done} epochs "
            f"(this fit asks for epochs={epochs}): nothing to train. fit returns that run's "
            f"recorded History and weights. To train again pass a new checkpoint_dir (or "
            f"resume='never'); to continue it pass epochs > {done}.")
