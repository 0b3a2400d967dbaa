"""Runs that are slow for one planted reason each: real short fits whose cause is built into
the data, the settings or the ranks (a dataset that sleeps, tiny batches, more threads than
cores, an unfused optimizer, a slowed rank, an embedding table all-reduced every step, a
pipeline with one micro-batch). Only the bf16 scenario simulates its cause: the CPU probe
reports a slow bf16 matmul, as it does on CPUs without native bf16.

No validation data here: these runs are judged on speed, and a few epochs say nothing about
quality.
"""
from __future__ import annotations

import tempfile
import time
from unittest import mock

import numpy as np
import torch
from torch.utils.data import Dataset

from bigtrain import layers as L
from bigtrain.diagnose import RunRecord
from bigtrain.models import Sequential
from bigtrain.optimizers import SGD, Adam, OptimizerSpec
from tests.diagnose.scenarios.common import BASE_X_Y, mlp, run

ITEM_SLEEP_S = 0.004  # the slow dataset's wait per item (a remote read, a decode)


class SlowDataset(Dataset):
    """A map-style dataset whose items take ITEM_SLEEP_S each to load."""

    def __init__(self, x, y):
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        time.sleep(ITEM_SLEEP_S)
        return self.x[i], self.y[i]


def input_bound():
    """The issue's third run: every item of a map-style dataset takes 4 ms to load."""
    x, y = BASE_X_Y
    model = mlp()
    model.compile(optimizer=Adam(learning_rate=1e-2), loss="sparse_categorical_crossentropy")
    with tempfile.TemporaryDirectory() as run_dir:
        model.fit(SlowDataset(x[:192], y[:192]), epochs=1, batch_size=32, verbose=0,
                  run_dir=run_dir)
        return RunRecord.load(run_dir)


def tiny_batches():
    """Batches of 2 samples: every step is fixed overhead around a tiny matmul."""
    x, y = BASE_X_Y
    return run(mlp((64,)), x[:48], y[:48], epochs=1, batch_size=2)


def thread_oversubscription():
    """Four times as many torch threads as the host has cores."""
    x, y = BASE_X_Y
    before = torch.get_num_threads()
    torch.set_num_threads(4 * (torch.multiprocessing.cpu_count() or 1))
    try:
        return run(mlp((64,)), x, y, epochs=1, batch_size=64)
    finally:
        torch.set_num_threads(before)


def unfused_optimizer():
    """Adam built with fused=False on a wide model: the per-tensor update loop is a large
    share of each step."""
    x, y = BASE_X_Y
    adam = OptimizerSpec(torch.optim.Adam, {"lr": 1e-3, "fused": False}, "adam")
    return run(mlp((1024, 1024)), x[:256], y[:256], optimizer=adam, epochs=1, batch_size=32)


def slow_bf16():
    """bf16-mixed on a CPU whose bf16 matmul the probe measures 12x slower than fp32."""
    from bigtrain.plan import bf16
    slow = bf16.Bf16Probe(fp32_s=0.001, bf16_s=0.012, n=256, native=False, flags=())
    x, y = BASE_X_Y
    with mock.patch.object(bf16, "probe_bf16", lambda *a, **k: slow):
        return run(mlp((64,)), x[:256], y[:256], epochs=1, batch_size=64,
                   precision="bf16-mixed")


# ---- ranks: one run_ranks job runs the three multi-process scenarios --------------------

class _SlowOnRank(torch.nn.Module):
    """Identity whose forward sleeps `seconds` on one rank (a busy host)."""

    def __init__(self, rank: int, seconds: float):
        super().__init__()
        self.slow = seconds if torch.distributed.get_rank() == rank else 0.0

    def forward(self, x):
        if self.slow:
            time.sleep(self.slow)
        return x


def _fit_on_rank(model, x, y, strategy, run_dir: str, env, optimizer=None) -> None:
    """model.fit's work on this rank of an already started job (run_rank with the task fit
    builds), so the job's ranks run several fits one after another."""
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import run_rank
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel import resolve_strategy
    model.compile(optimizer=optimizer or Adam(learning_rate=1e-2),
                  loss="sparse_categorical_crossentropy")
    config = FitConfig(epochs=1, batch_size=64, verbose=0)
    task = make_task(model, prepare_data(model, x, y), None, config, [], run_dir=run_dir)
    run_rank(task, resolve_strategy(strategy), model, env)


def _straggler(run_dir: str, env):
    """Rank 1's forward sleeps 30 ms each step (a busy host)."""
    from bigtrain.models import Model
    x, y = BASE_X_Y
    net = torch.nn.Sequential(_SlowOnRank(1, 0.03), torch.nn.Linear(8, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 2), torch.nn.Softmax(-1))
    _fit_on_rank(Model(net), x[:384], y[:384], "ddp", run_dir, env)


def _comm_bound(run_dir: str, env):
    """DDP with gradient buckets of 0 MB: one all-reduce per parameter tensor (18 of them),
    each a round trip between the ranks, around a step of almost no compute."""
    from bigtrain.parallel.data_parallel import DataParallel
    x, y = BASE_X_Y
    _fit_on_rank(mlp((32,) * 8), x[:384], y[:384], DataParallel(bucket_cap_mb=0), run_dir,
                 env, optimizer=SGD(learning_rate=0.05))


def _pipeline(run_dir: str, env):
    """Two pipeline stages and one micro-batch per step: each stage idles half the step."""
    from bigtrain.parallel.pipeline import Pipeline
    x, y = BASE_X_Y
    _fit_on_rank(mlp((64, 64, 64)), x[:384], y[:384],
                 Pipeline(stages=2, microbatches=1, schedule="gpipe"),
                 run_dir, env)


RANK_SCENARIOS = {"straggler": _straggler, "comm_bound": _comm_bound,
                  "pipeline_bubble": _pipeline}


def _rank_job(rank, world, folder):
    from bigtrain.parallel.base import DistEnv
    env = DistEnv(rank=rank, world_size=world, local_world_size=world)
    torch.manual_seed(0)  # the same initial weights on both ranks
    out = {}
    for name, fn in RANK_SCENARIOS.items():
        fn(f"{folder}/{name}", env)
        out[name] = RunRecord.load(f"{folder}/{name}") if rank == 0 else None
    return out


def rank_scenarios() -> dict[str, RunRecord]:
    """The straggler, communication-bound and pipeline runs, on 2 gloo ranks."""
    from tests.dist import run_ranks
    with tempfile.TemporaryDirectory() as folder:
        return run_ranks(_rank_job, 2, folder, timeout=240)[0]
