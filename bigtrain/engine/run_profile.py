"""The doctor's part of the run record, filled on rank 0 without collectives: the data
profile of the training and validation arrays (bigtrain.diagnose.profile), the RunMonitor's
stop, step losses and gradient health, and the rank-local record written at epoch ends and
when a fit ends badly (when no collective can be trusted any more).

A fit on several ranks leaves the data profile to the process that called fit
(`CallerProfile`): it has the same arrays, and its profile of them is the same (a multi-rank
profile has no validation probabilities), but importing scikit-learn, SciPy and cleanlab in
a freshly started rank 0 held every rank at the end of the fit for about 9 s; the caller
pays that import once per process, not once per fit.

Example (what the loop does when a fit raises):
    write_local_record(task, strategy, timing, monitor, profile=True)
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings

import numpy as np
import torch
from torch import nn

from bigtrain.diagnose.profile import profile_data, profile_rows
from bigtrain.diagnose.record import RECORD_FILE, RunRecord, StepTimes
from bigtrain.engine.data import DatasetData

_INPUT_SCALERS = ("Normaliz", "Rescal", "BatchNorm", "LayerNorm", "Standard")


def _normalized_in_model(net: nn.Module) -> bool:
    """The model scales its own inputs: a normalization layer comes before the first
    Linear/conv layer."""
    for mod in net.modules():
        if any(s in type(mod).__name__ for s in _INPUT_SCALERS):
            return True
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)):
            return False
    return False


def _output_units(net: nn.Module) -> int | None:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def _arrays(data, rows: np.ndarray):
    """(x, y) numpy of `rows` of single-input, single-output in-memory data, else None."""
    if data is None or isinstance(data, DatasetData) or len(getattr(data, "xs", [])) != 1 \
            or len(getattr(data, "ys", []) or []) != 1:
        return None
    x, y, _ = data.take(torch.as_tensor(rows), torch.device("cpu"))
    if isinstance(x, tuple) or isinstance(y, tuple):
        return None
    return x, y


def _val_probs(task, net: nn.Module, x: torch.Tensor) -> np.ndarray | None:
    """The trained model's class probabilities on validation rows (out of sample)."""
    act = task.activations[0] if task.activations else None
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x)
    except Exception:  # noqa: BLE001 - a model we cannot call alone gives no probabilities
        return None
    finally:
        net.train(was)
    if not torch.is_tensor(out) or out.dim() != 2:
        return None
    out = out.float() if act is None else act(out.float())
    if out.shape[1] == 1:
        p = out[:, 0] if ((out >= 0) & (out <= 1)).all() else torch.sigmoid(out[:, 0])
        return torch.stack([1 - p, p], 1).numpy().astype(np.float64)
    if not (((out >= 0) & (out <= 1)).all() and torch.allclose(out.sum(1), torch.ones(1),
                                                                 atol=1e-3)):
        out = torch.softmax(out, 1)
    return out.numpy().astype(np.float64)


def _reads_probabilities(task, net: nn.Module, x: torch.Tensor) -> bool:
    """The loss reads the output as logits (from_logits=True, no activation moved into
    it) while the model already outputs class probabilities (a softmax layer): the loss
    applies a second softmax, and the model trains towards a floor it cannot pass."""
    loss = task.losses[0] if len(task.losses) == 1 else None
    if loss is None or not getattr(loss, "from_logits", False) or \
            (task.activations and task.activations[0] is not None):
        return False
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x[:64])
    except Exception:  # noqa: BLE001 - a model we cannot call alone says nothing here
        return False
    finally:
        net.train(was)
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[1] < 2:
        return False
    out = out.float()
    return bool(((out >= 0) & (out <= 1)).all() and
                torch.allclose(out.sum(1), torch.ones(1), atol=1e-3))


def data_profile(task, strategy) -> dict:
    """The data profile of this fit's training/validation arrays; {} for Datasets, several
    inputs or outputs, or when profiling fails (the record is still written), and on
    several ranks, where the process that called fit adds it (`CallerProfile`)."""
    if strategy.env.world_size > 1:
        return {}
    single = not any(hasattr(p, "to_local") for p in task.module.parameters())
    return profile_of(task, with_probs=single)


def profile_of(task, with_probs: bool) -> dict:
    """`data_profile` of `task`'s arrays; `with_probs`: the validation rows' predicted
    probabilities from `task.module` join the label check (a module one process can call)."""
    try:
        rows = profile_rows(len(task.train))
        train = _arrays(task.train, rows)
        if train is None:
            return {}
        vrows = profile_rows(len(task.val)) if task.val is not None else None
        val = _arrays(task.val, vrows) if task.val is not None else None
        probs = _val_probs(task, task.module, val[0]) if val is not None and with_probs \
            else None
        loss = task.losses[0].name if len(task.losses) == 1 else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prof = profile_data(train[0].numpy(), train[1].numpy(),
                                None if val is None else val[0].numpy(),
                                None if val is None else val[1].numpy(), loss=loss,
                                output_units=_output_units(task.module), val_probs=probs,
                                loss_reads_probabilities=_reads_probabilities(
                                    task, task.module, train[0]))
    except Exception as e:  # noqa: BLE001 - the profile is advice; never lose the record
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    prof["normalized_in_model"] = _normalized_in_model(task.module)
    issues = prof.get("label_issues")
    if issues:  # rows of the profile's sample -> rows of the split
        split_rows = rows if issues["split"] == "train" else vrows
        issues["worst"] = [int(split_rows[i]) for i in issues["worst"]]
    return prof


def doctor_fields(monitor, profile: dict | None) -> dict:
    """RunRecord keyword arguments from the monitor (and the data profile)."""
    fields = {} if monitor is None else monitor.fields()
    if profile:
        fields["data_profile"] = profile
        if profile.get("task") == "classification":
            fields["num_classes"] = profile.get("classes")
    return fields


#: an epoch-end record is written when the last one is at least this old (seconds)
EPOCH_RECORD_EVERY_S = 2.0


def _recently_written(run_dir) -> bool:
    """Whether run_dir's record was written less than EPOCH_RECORD_EVERY_S ago."""
    try:
        age = time.time() - os.stat(os.path.join(run_dir, RECORD_FILE)).st_mtime
    except OSError:
        return False
    return 0 <= age < EPOCH_RECORD_EVERY_S


def write_local_record(task, strategy, timing, monitor, profile: bool = False) -> None:
    """Write rank 0's record from what it knows alone (no collectives): the history so
    far, the monitor's fields, its own step phases; with `profile`, the data profile.

    At a plain epoch end (no `timing`, no stop) the write is skipped while the record on
    disk is younger than EPOCH_RECORD_EVERY_S: a record costs several milliseconds to
    write (a few per cent of a short epoch, more as its gradient health grows), so short
    epochs write it about every two seconds. The first epoch always writes (replacing a
    record an earlier fit left in run_dir), a stop (NaN, exception, Ctrl-C) always writes,
    and the end of the fit writes the full record (bigtrain.engine.record).
    """
    if not strategy.env.is_main or task.run_dir is None:
        return
    first = len(next(iter(monitor.history.values()), [])) <= 1  # replaces an older fit's
    if timing is None and monitor.stop is None and not first and \
            _recently_written(task.run_dir):
        return
    ph = timing.timer.means() if timing is not None else {}  # stops the timer: last use
    fields = doctor_fields(monitor, data_profile(task, strategy) if profile else None)
    record = RunRecord(
        strategy=strategy.describe(), world_size=strategy.env.world_size,
        threads_per_rank=torch.get_num_threads(), optimizer=task.optimizer_name,
        precision=task.config.precision, batch_size=task.config.batch_size,
        epochs=len(next(iter(monitor.history.values()), [])), cpu_cores=os.cpu_count(),
        local_world_size=strategy.env.local_world_size, device=str(strategy.env.device),
        step_time=StepTimes(**{k: ph.get(k, 0.0) for k in
                               ("data", "forward", "backward", "optimizer", "other")},
                            comm_exposed=ph.get("comm", 0.0)),
        history={k: list(v) for k, v in monitor.history.items()},
        extra={"record": "rank 0 alone (written at an epoch end or when the fit stopped "
                         "early; per-rank figures need the end of the fit)"},
        **fields)
    record.save(task.run_dir)



class CallerProfile:
    """Adds the data profile to the record of a multi-rank fit, in the process that called
    fit, once the ranks have written it (also when the fit raised; not after Ctrl-C).

    Args:
        main: this process is rank 0 of its job (or a plain script): only it writes.

    Example (what fit does):
        with CallerProfile(main=True) as caller:
            run_fit(..., make_task=lambda cbs: caller.keep(make_task(cbs)))
    """

    def __init__(self, main: bool = True):
        self.main, self.task, self.since = main, None, time.time()

    def keep(self, task):
        """The fit's task (its arrays and run_dir); returns it."""
        self.task = task
        return task

    def __enter__(self):
        self.since = time.time()
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        task = self.task  # weights_in_place: one process here, which profiled already
        if self.main and task is not None and task.run_dir is not None and \
                not task.weights_in_place and kind is not KeyboardInterrupt:
            fill_data_profile(task, self.since)
        return False


def fill_data_profile(task, since: float) -> None:
    """Add the data profile to `task.run_dir`'s record when a fit on several ranks wrote it
    (at or after `since`, a time.time()) without one."""
    path = os.path.join(task.run_dir, RECORD_FILE)
    try:
        if os.stat(path).st_mtime < since - 1.0:  # an older fit's (1 s: coarse file clocks)
            return
        record = RunRecord.load(path)
    except (OSError, ValueError, TypeError):  # no record, or one this version cannot read
        return
    if record.world_size <= 1 or record.data_profile:
        return
    fields = doctor_fields(None, profile_of(task, with_probs=False))
    if fields:
        dataclasses.replace(record, **fields).save(task.run_dir)
