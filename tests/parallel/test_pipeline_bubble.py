"""The pipeline bubble a fit measures (run.json) against the schedule's theory.

Each layer's forward and backward sleep a fixed time besides a small matmul, so every
micro-batch costs the same whatever else the host runs, and a P=2 pipeline with M
micro-batches should idle about (P - 1) / (M + P - 1) of each step (1/3 at M=2, 1/9 at M=8):
the bubble must be positive, within a loose factor of that, and smaller at M=8 than at M=2.
"""
import time
from types import SimpleNamespace

import torch
from torch import nn

from bigtrain.diagnose import RunRecord
from tests.dist import run_ranks

FORWARD_S, BACKWARD_S = 0.003, 0.006  # per layer and micro-batch
WIDTH, BATCH, STEPS = 16, 32, 5


class _Sleep(torch.autograd.Function):
    """Identity that takes FORWARD_S in forward and BACKWARD_S in backward."""

    @staticmethod
    def forward(ctx, x):
        time.sleep(FORWARD_S)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(BACKWARD_S)
        return grad


class SlowLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        return _Sleep.apply(torch.tanh(self.linear(x)))


def _task(run_dir: str, steps: int):
    from bigtrain.engine.data import ArrayData
    from bigtrain.engine.task import FitConfig, TrainTask
    torch.manual_seed(0)
    x, y = torch.randn(steps * BATCH, WIDTH), torch.randn(steps * BATCH, WIDTH)
    return TrainTask(
        module=nn.Sequential(*[SlowLayer() for _ in range(4)]),
        losses=[lambda y_true, y_pred, sw: ((y_pred - y_true) ** 2).mean()],
        loss_weights=[1.0], metrics=[[]], activations=[None],
        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.01), optimizer_name="sgd",
        train=ArrayData([x], [y]), val=None,
        config=FitConfig(epochs=1, batch_size=BATCH, verbose=0, shuffle=False),
        run_dir=run_dir)


def _fit_pipelines(rank, world, folder, microbatches):
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel.base import DistEnv
    from bigtrain.parallel.pipeline import Pipeline
    env = DistEnv(rank=rank, world_size=world, local_world_size=world)
    out = {}
    for m in microbatches:
        run_dir = f"{folder}/m{m}"
        strategy = Pipeline(stages=2, microbatches=m, schedule="1f1b", split=[2, 2])
        run_rank(_task(run_dir, STEPS), strategy, SimpleNamespace(), env)
        out[m] = RunRecord.load(run_dir) if rank == 0 else None
    return out


def test_measured_bubble_follows_the_schedule_theory(tmp_path):
    records = run_ranks(_fit_pipelines, 2, str(tmp_path), (2, 8), timeout=180)[0]
    bubble = {}
    for m, rec in records.items():
        theory = 1 / (m + 1)  # (P - 1) / (M + P - 1) with P = 2
        assert rec.pipeline_stages == 2 and rec.microbatches == m
        assert rec.extra["pipeline_bubble_theory"] == theory
        assert 0.3 * theory < rec.pipeline_bubble < 3 * theory, (m, rec.pipeline_bubble)
        bubble[m] = rec.pipeline_bubble
        st = rec.step_time
        # stage compute: 2 layers x m micro-batches of sleep per step
        assert st.forward >= 0.9 * 2 * FORWARD_S * m and st.backward >= 0.9 * 2 * BACKWARD_S * m
        assert st.other > 0  # the idle part of the schedule
    assert bubble[8] < bubble[2]
