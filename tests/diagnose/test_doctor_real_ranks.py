"""The doctor's rank findings on real 2-rank DDP runs (gloo, CPU) on the digits, one job:

- a healthy tiny model at batch_size=32 (16 samples per rank): its MFU is far below 20%
  at any batch size, so small_batch (which used to come first) says nothing;
- rank 1's forward sleeps 60 ms in 5 steps of 46 (another process took its core for a
  while): its mean step is several times rank 0's, which used to make it a straggler,
  but it is not slower step after step;
- rank 1's forward sleeps 4 ms in every step: a straggler, with the steps that show it.
"""
import tempfile
import time

import pytest
import torch

from bigtrain.diagnose import RunRecord, check_run
from tests.diagnose.adversary_runs import mlp, shown, sklearn_data
from tests.dist import run_ranks


class _Delay(torch.nn.Module):
    """Identity whose training forward sleeps `seconds` on rank 1, in the forward calls
    numbered in `calls` (1-based; None: every one)."""

    def __init__(self, seconds: float, calls=None):
        super().__init__()
        self.seconds = seconds if torch.distributed.get_rank() == 1 else 0.0
        self.calls, self.count = calls, 0

    def forward(self, x):
        if self.seconds and self.training:
            self.count += 1
            if self.calls is None or self.count in self.calls:
                time.sleep(self.seconds)
        return x


def _fit(model, x, y, batch_size, epochs, run_dir, env):
    """model.fit's work on this rank of the running job, with a run directory."""
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import run_rank
    from bigtrain.engine.task import FitConfig
    from bigtrain.optimizers import Adam
    from bigtrain.parallel import resolve_strategy
    model.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy")
    config = FitConfig(epochs=epochs, batch_size=batch_size, verbose=0)
    task = make_task(model, prepare_data(model, x, y), None, config, [], run_dir=run_dir)
    run_rank(task, resolve_strategy("ddp"), model, env)


def _delayed(delay):
    from bigtrain.models import Model
    return Model(torch.nn.Sequential(delay, torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                     torch.nn.Linear(32, 10), torch.nn.Softmax(-1)))


def _job(rank, world, folder, x, y):
    from bigtrain.models import Sequential
    from bigtrain.parallel.base import DistEnv
    torch.set_num_threads(1)
    env = DistEnv(rank=rank, world_size=world, local_world_size=world)
    runs = {"healthy": (lambda: Sequential(mlp(64, (32,), 10)), 32, 1),
            "burst": (lambda: _delayed(_Delay(0.06, calls=range(3, 8))), 64, 2),
            "slow": (lambda: _delayed(_Delay(0.004)), 64, 2)}
    out = {}
    for name, (build, batch, epochs) in runs.items():
        torch.manual_seed(0)
        _fit(build(), x, y, batch, epochs, f"{folder}/{name}", env)
        out[name] = RunRecord.load(f"{folder}/{name}") if rank == 0 else None
    return out


@pytest.fixture(scope="module")
def records():
    x, y, _, _ = sklearn_data("digits")
    with tempfile.TemporaryDirectory() as folder:
        return run_ranks(_job, 2, folder, x, y, timeout=120)[0]


def test_a_healthy_tiny_model_at_batch_32_gets_no_small_batch(records):
    rec = records["healthy"]
    assert rec.batch_size // rec.world_size == 16 and rec.mfu < 0.01
    assert "small_batch" not in [f.kind for f in check_run(rec)], shown(check_run(rec))


def test_a_burst_of_slow_steps_on_one_rank_is_no_straggler(records):
    rec = records["burst"]
    assert rec.rank_step_times[1] > 1.5 * rec.rank_step_times[0]  # slower on average
    assert "straggler" not in [f.kind for f in check_run(rec)], shown(check_run(rec))
    slept = [v for v in rec.rank_step_samples[1] if v > 0.06]
    assert len(slept) == 5 and len(rec.rank_step_samples[1]) >= 15  # in 5 steps only


def test_a_rank_slow_in_every_step_is_a_straggler(records):
    rec = records["slow"]
    found = [f for f in check_run(rec) if f.kind == "straggler"]
    assert found and found[0].evidence.startswith("rank 1"), shown(check_run(rec))
    assert "sampled steps" in found[0].evidence
