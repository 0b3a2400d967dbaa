"""What a run record costs a fit: with `run_dir` the loop reads no running logs per step
(the step losses come from the epoch's Tally), gradient health is sampled at most every
MIN_EVERY steps (a short run still gets MIN_RUN_SAMPLES), and the ranks of a multi-rank fit
leave the data profile (scikit-learn, cleanlab) to the process that called fit.
"""
import sys

import numpy as np
import pytest

import bigtrain
from bigtrain.api.training import make_task, prepare_data
from bigtrain.callbacks import Callback
from bigtrain.diagnose.record import RunRecord
from bigtrain.engine.callbacks import run_monitor
from bigtrain.engine.steps import Tally
from bigtrain.engine.task import FitConfig
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from tests.dist import run_ranks

pytestmark = pytest.mark.filterwarnings("ignore")
RNG = np.random.default_rng(0)
X = RNG.normal(size=(256, 8)).astype("float32")
Y = RNG.integers(0, 3, 256)
PROFILE_MODULES = ("sklearn", "cleanlab")


def _model():
    bigtrain.set_seed(0)
    i = Input(shape=(8,))
    o = Dense(3, activation="softmax")(Dense(16, activation="relu")(i))
    m = Model(inputs=i, outputs=o)
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return m


class RunningLosses(Callback):
    """Each step's own loss from Keras's running-mean batch logs (equal batches)."""
    wants_batch_logs = True

    def __init__(self):
        super().__init__()
        self.losses, self._mean = [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.losses, self._mean = [], 0.0

    def on_train_batch_end(self, batch, logs=None):
        k, mean = len(self.losses), logs["loss"]
        self.losses.append((k + 1) * mean - k * self._mean)
        self._mean = mean


def test_run_dir_reads_no_running_logs_and_keeps_the_step_losses(tmp_path, monkeypatch):
    reference = RunningLosses()
    _model().fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0,
                 callbacks=[reference])
    reads = []
    original = Tally.running_logs
    monkeypatch.setattr(Tally, "running_logs", lambda self: reads.append(1) or original(self))
    _model().fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0, run_dir=tmp_path)
    assert reads == []
    rec = RunRecord.load(tmp_path)
    assert len(rec.step_losses) == 32 and rec.stop["step"] == 31  # the last epoch's steps
    np.testing.assert_allclose(rec.step_losses, reference.losses, rtol=1e-4, atol=1e-5)


def test_gradient_health_is_sampled_at_most_every_min_every_steps(tmp_path):
    _model().fit(X, Y, epochs=2, batch_size=4, verbose=0, run_dir=tmp_path)  # 64 steps/epoch
    steps = RunRecord.load(tmp_path).layer_health["steps"]
    assert steps[0] == 0 and min(np.diff(steps)) >= run_monitor.MIN_EVERY
    assert len(steps) == 128 // run_monitor.MIN_EVERY


def test_a_short_run_still_gets_enough_gradient_health_samples(tmp_path):
    _model().fit(X, Y, epochs=1, batch_size=64, verbose=0, run_dir=tmp_path)  # 4 steps
    assert len(RunRecord.load(tmp_path).layer_health["steps"]) >= run_monitor.MIN_RUN_SAMPLES


def _rank_fit(rank, world_size, run_dir):
    """Run the engine with a run_dir on this rank; (the profile modules this rank imported,
    its record's data profile on rank 0)."""
    import torch
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    before = set(sys.modules)
    model = _model()
    task = make_task(model, prepare_data(model, X, Y), None,
                     FitConfig(epochs=1, batch_size=64, verbose=0), [], run_dir=run_dir,
                     split=True)
    env = DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                  local_world_size=world_size, device=torch.device("cpu"))
    run_rank(task, resolve_strategy("ddp"), model, env)
    new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in PROFILE_MODULES)
    return new, RunRecord.load(run_dir).data_profile if rank == 0 else None


def test_ranks_leave_the_data_profile_to_the_caller(tmp_path):
    (imported, profile), (imported_1, _) = run_ranks(_rank_fit, 2, str(tmp_path),
                                                     timeout=60, pg_timeout=10)
    assert imported == [] and imported_1 == [] and profile == {}


def test_a_multi_rank_fit_record_gets_the_callers_data_profile(tmp_path):
    _model().fit(X, Y, epochs=1, batch_size=64, verbose=0, run_dir=tmp_path,
                 strategy="ddp", devices=2)
    rec = RunRecord.load(tmp_path)
    assert rec.world_size == 2 and rec.num_classes == 3
    one = tmp_path / "one"
    _model().fit(X, Y, epochs=1, batch_size=64, verbose=0, run_dir=one)  # profiled in-process
    expected = RunRecord.load(one).data_profile
    assert rec.data_profile["task"] == "classification" and "linear" in rec.data_profile
    for key in ("classes", "class_counts", "scale", "linear", "rows"):
        assert rec.data_profile[key] == expected[key], key
