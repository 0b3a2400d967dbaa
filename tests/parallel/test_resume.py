"""Resharding on resume: a run checkpointed by 2 ranks continues on 2, 1 and 3 ranks.

Every strategy saves after each optimizer step (2 epochs x 3 steps). A second run then starts
from scrambled weights, resumes from one of those checkpoints (mid-epoch or at an epoch end)
and must end with the uninterrupted run's weights:
  - on the same 2 ranks: bit for bit (same reductions in the same order);
  - on 1 rank (in this process) or 3 ranks: within 1e-6 (gradients are summed over another
    number of ranks, so float rounding differs; measured ~1.5e-8).
It must also train only the batches the checkpoint had not seen.
"""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from bigtrain.engine.checkpoint import export_safetensors
from tests.dist import run_ranks
from tests.engine.test_checkpoint import CountBatches
from tests.parallel.strategy_cases import build, max_param_diff

STRATEGIES = ["zero3", "zero1", "ddp"]
ONLY_ON_TWO = ["fsdp_offload"]  # same FSDP2 path as zero3, state on the host
STEPS_PER_EPOCH, EPOCHS, BATCH = 3, 2, 24
TOTAL = STEPS_PER_EPOCH * EPOCHS
TOL = 1e-6


def train_run(strategy_name: str, ckpt: str, resume: str) -> tuple[dict | None, int]:
    """(rank 0's final state, batches trained) for one run, in a rank or in-process."""
    from bigtrain.engine.loop import train
    from bigtrain.engine.task import CheckpointConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    model, task = build("seed", steps=STEPS_PER_EPOCH, batch=BATCH)
    counter = CountBatches()
    task.config = replace(task.config, epochs=EPOCHS)
    task.callbacks = [counter]
    task.checkpoint = CheckpointConfig(ckpt, every_steps=1, keep_last=TOTAL, resume=resume)
    if resume != "never":  # only a real load can bring these weights back
        with torch.no_grad():
            for p in model.net.parameters():
                p.normal_()
    env = DistEnv()
    if dist.is_initialized():
        r, w = dist.get_rank(), dist.get_world_size()
        env = DistEnv(rank=r, world_size=w, local_rank=r, local_world_size=w)
    strategy = resolve_strategy(strategy_name)
    strategy.setup(env)
    try:
        return train(task, strategy, model).state_dict, counter.count
    finally:
        strategy.teardown()


def _saved(base: str, name: str, step: int) -> str:
    return os.path.join(base, name, "full", f"step-{step:08d}")


def _two_ranks(rank, world_size, base):
    out = {}
    for name in STRATEGIES + ONLY_ON_TWO:
        full, _ = train_run(name, os.path.join(base, name, "full"), "never")
        out[name] = (full, *train_run(name, os.path.join(base, name, "w2"), _saved(base, name, 4)))
    # the layout is the same for every strategy: ddp continues what zero3 saved
    out["zero3->ddp"] = (out["zero3"][0],
                         *train_run("ddp", os.path.join(base, "x"), _saved(base, "zero3", 4)))
    return out if rank == 0 else None


def _three_ranks(rank, world_size, base):
    out = {name: train_run(name, os.path.join(base, name, "w3"), _saved(base, name, 2))
           for name in STRATEGIES}
    return out if rank == 0 else None


@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("resume"))
    return base, run_ranks(_two_ranks, 2, base, timeout=240)[0]


@pytest.mark.slow
def test_resume_on_the_same_two_ranks_is_bit_exact(saved_on_two):
    _, runs = saved_on_two
    for name, (full, resumed, batches) in runs.items():
        assert batches == TOTAL - 4, name  # steps 5 and 6 only
        tol = 0.0 if "->" not in name else 1e-5  # zero3 and ddp sum gradients differently
        assert max_param_diff(full, resumed) <= tol, name


@pytest.mark.slow
def test_resume_on_three_ranks(saved_on_two):
    base, runs = saved_on_two
    got = run_ranks(_three_ranks, 3, base, timeout=240)[0]
    for name in STRATEGIES:
        state, batches = got[name]
        assert batches == TOTAL - 2, name  # resumed inside the first epoch
        assert max_param_diff(runs[name][0], state) <= TOL, name


@pytest.mark.slow
def test_resume_on_one_rank_in_process(saved_on_two):
    base, runs = saved_on_two
    for name in STRATEGIES:
        for step in (3, 5):  # an epoch end and mid-epoch
            state, batches = train_run(name, os.path.join(base, name, f"w1-{step}"),
                                       _saved(base, name, step))
            assert batches == TOTAL - step, (name, step)
            assert max_param_diff(runs[name][0], state) <= TOL, (name, step)


def test_export_of_a_sharded_checkpoint_is_the_full_model(saved_on_two, tmp_path):
    base, runs = saved_on_two
    out = str(tmp_path / "zero3.safetensors")
    export_safetensors(os.path.join(base, "zero3", "full"), out)  # written by 2 FSDP2 ranks
    assert max_param_diff(runs["zero3"][0], load_file(out)) == 0.0
