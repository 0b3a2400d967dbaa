"""The run record survives a bad ending: a NaN stop, an exception, Ctrl-C and a killed rank
each leave run.json with the history so far, the last epoch's step losses, gradient health
and the reason the run stopped."""
import json
import os

import numpy as np
import pytest

from bigtrain import layers as L
from bigtrain.callbacks import Callback
from bigtrain.diagnose import RunRecord, check_run
from bigtrain.engine.callbacks.run_monitor import MIN_RUN_SAMPLES
from bigtrain.models import Sequential
from bigtrain.optimizers import SGD, Adam
from tests.dist import run_ranks

RNG = np.random.default_rng(0)
X = RNG.standard_normal((256, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)


def _model(optimizer=None):
    m = Sequential([L.Input((4,)), L.Dense(8, activation="relu"),
                    L.Dense(2, activation="softmax")])
    m.compile(optimizer=optimizer or Adam(learning_rate=1e-2),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


class _RaiseAt(Callback):
    """Raises `exc` at batch `batch` of epoch `epoch` (0-based)."""

    main_process_only = False

    def __init__(self, epoch, batch, exc):
        super().__init__()
        self.at, self.exc, self.epoch = (epoch, batch), exc, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise self.exc


def test_nan_stop_in_the_first_epoch_keeps_step_losses_and_the_reason(tmp_path):
    _model(SGD(learning_rate=1e8)).fit(X, Y, epochs=2, batch_size=16, verbose=0,
                                       run_dir=tmp_path)
    rec = RunRecord.load(tmp_path)
    assert rec.stop["reason"] == "nan_loss" and rec.stop["epoch"] == 0
    assert rec.history == {}  # no epoch finished
    assert 1 <= len(rec.step_losses) <= 16 and not np.isfinite(rec.step_losses[-1])
    assert np.isfinite(rec.step_losses[0])
    assert rec.layer_health["steps"][0] == 0 and len(rec.layer_health["layers"]) == 2
    kinds = [f.kind for f in check_run(rec)]
    assert "nan_loss" in kinds and kinds[0] in ("lr_too_high", "exploding_gradients")


def test_an_exception_leaves_the_history_so_far(tmp_path):
    with pytest.raises(RuntimeError, match="disk full"):
        _model().fit(X, Y, epochs=3, batch_size=32, verbose=0, run_dir=tmp_path,
                     callbacks=[_RaiseAt(1, 3, RuntimeError("disk full"))])
    rec = RunRecord.load(tmp_path)
    assert rec.stop == {"reason": "exception", "epoch": 1, "step": 3,
                        "message": "RuntimeError: disk full"}
    assert len(rec.history["loss"]) == 1 and len(rec.history["accuracy"]) == 1
    assert len(rec.step_losses) == 4  # steps 0..3 of the epoch it stopped in
    assert rec.data_profile["task"] == "classification"
    assert check_run(rec)[0].kind == "run_stopped"


def test_ctrl_c_is_recorded_as_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _model().fit(X, Y, epochs=3, batch_size=32, verbose=0, run_dir=tmp_path,
                     callbacks=[_RaiseAt(2, 0, KeyboardInterrupt())])
    rec = RunRecord.load(tmp_path)
    assert rec.stop["reason"] == "interrupted" and rec.stop["epoch"] == 2
    assert len(rec.history["loss"]) == 2


def test_a_completed_run_says_so_and_records_gradient_health(tmp_path):
    _model().fit(X, Y, epochs=2, batch_size=32, verbose=0, run_dir=tmp_path)
    rec = RunRecord.load(tmp_path)
    assert rec.stop["reason"] == "completed" and len(rec.step_losses) == 8
    health = rec.layer_health
    # 16 steps: MIN_RUN_SAMPLES samples, evenly spaced from the first step
    every = 16 // MIN_RUN_SAMPLES
    assert health["every"] == every and health["steps"] == list(range(0, 16, every))
    for layer in health["layers"].values():
        assert len(layer["grad"]) == len(layer["update"]) == MIN_RUN_SAMPLES
        assert all(g > 0 for g in layer["grad"])


class _KillRank1(Callback):
    """Rank 1 dies outright (no cleanup) at step 2 of epoch 1 (0-based)."""

    main_process_only = False

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        import torch.distributed as dist
        if dist.get_rank() == 1 and (self.epoch, batch) == (1, 2):
            os._exit(9)


def _fit_then_lose_rank1(rank, world, run_dir):
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import run_rank
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    model = _model()
    config = FitConfig(epochs=3, batch_size=32, verbose=0)
    task = make_task(model, prepare_data(model, X, Y), None, config, [_KillRank1()],
                     run_dir=run_dir)
    env = DistEnv(rank=rank, world_size=world, local_world_size=world)
    run_rank(task, resolve_strategy("ddp"), model, env)


@pytest.mark.timeout(240)
def test_a_killed_rank_leaves_rank_0s_record(tmp_path):
    with pytest.raises(RuntimeError):
        run_ranks(_fit_then_lose_rank1, 2, str(tmp_path), timeout=150, pg_timeout=20)
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["stop"]["reason"] in ("rank_lost", "exception") and rec["stop"]["epoch"] == 1
    assert len(rec["history"]["loss"]) == 1
