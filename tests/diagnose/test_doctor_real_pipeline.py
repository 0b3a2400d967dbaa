"""The doctor's advice on a real 2-rank pipeline run (gloo, CPU).

A pipeline whose stage split is lopsided (split=[1, 6]: one layer on stage 0, six wide ones
on stage 1) with 16 micro-batches: stage 1 is the slow rank. The advice must rebalance the
stages (never ddp_balanced, which splits a data-parallel batch), and never suggest fewer
micro-batches (the bubble (p-1)/(m+p-1) grows as m falls). The small-batch finding must count
the samples a stage really computes on: every stage of a pipeline sees each whole micro-batch,
batch_size / microbatches samples.
"""
import re
import tempfile

import torch

from bigtrain import layers as L
from bigtrain.diagnose import RunRecord, check_run
from bigtrain.models import Sequential
from bigtrain.optimizers import Adam
from tests.dist import run_ranks

BATCH, MICRO = 64, 16


def _fit(model, strategy, run_dir, env):
    """model.fit's work on this rank of the running job (as fit(devices=2) would do it)."""
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import run_rank
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel import resolve_strategy
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=rng).numpy()
    y = (x[:, 0] > 0).astype("int64")
    model.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy")
    config = FitConfig(epochs=1, batch_size=BATCH, verbose=0)
    task = make_task(model, prepare_data(model, x, y), None, config, [], run_dir=run_dir)
    run_rank(task, resolve_strategy(strategy), model, env)


def _job(rank, world, folder):
    from bigtrain.parallel.base import DistEnv
    from bigtrain.parallel.pipeline import Pipeline
    env = DistEnv(rank=rank, world_size=world, local_world_size=world)
    torch.manual_seed(0)
    layers = [L.Input((32,)), L.Dense(32, activation="relu")]
    layers += [L.Dense(256, activation="relu") for _ in range(5)] + [L.Dense(2)]
    _fit(Sequential(layers), Pipeline(stages=2, microbatches=MICRO, schedule="gpipe",
                                      split=[1, 6]), f"{folder}/pipe", env)
    return RunRecord.load(f"{folder}/pipe") if rank == 0 else None


def _record():
    with tempfile.TemporaryDirectory() as folder:
        return run_ranks(_job, 2, folder, timeout=120)[0]


def test_pipeline_advice_rebalances_stages_and_counts_micro_batch_samples():
    pipe = _record()
    assert pipe.pipeline_stages == 2 and pipe.microbatches == MICRO
    assert pipe.rank_step_times[1] > 1.5 * pipe.rank_step_times[0]  # stage 1 is the slow one
    findings = check_run(pipe)
    for f in findings:
        assert "ddp_balanced" not in f.advice, (f.kind, f.advice)
        for m in re.findall(r"microbatches=(\d+)", f.advice):
            assert int(m) >= MICRO, (f.kind, f.advice)
    slow = [f for f in findings if f.kind in ("straggler", "pipeline_bubble")]
    assert slow and all("split=" in f.advice for f in slow), [(f.kind, f.advice) for f in slow]
    new = [int(c) for c in re.search(r"split=\[([0-9, ]+)\]", slow[0].advice).group(1).split(",")]
    assert sum(new) == 7 and new[1] < 6, slow[0].advice  # a layer moves off the slow stage 1
    small = [f for f in findings if f.kind == "small_batch"]
    assert pipe.mfu is not None and pipe.mfu < 0.2 and small, (pipe.mfu, findings)
    # each stage computes on whole micro-batches: 64 / 16 = 4 samples, not 64 / 2 / 16
    assert f"with {BATCH // MICRO} samples per rank" in small[0].evidence, small[0].evidence
