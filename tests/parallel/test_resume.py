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


def test_ranks_share_the_checksums_of_a_checkpoint_files(saved_on_two):
    """Each of the 2 saving ranks hashed its share of the tensor files; the metadata holds
    every file's checksum, and the ranks' share files are gone."""
    import json

    from bigtrain.engine.checkpoint import DIGESTS, file_digests
    path = _saved(saved_on_two[0], "zero3", 4)
    saved = json.load(open(os.path.join(path, "meta.json")))["files_sha256"]
    assert sorted(saved) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert saved == file_digests(path)
    assert not [n for n in os.listdir(path) if n.startswith(DIGESTS)]


def _resume_damaged(rank, world_size, path):
    from bigtrain.engine.checkpoint import CheckpointError
    try:
        train_run("zero3", os.path.join(os.path.dirname(path), f"after-{rank}"), path)
    except CheckpointError as e:
        return str(e)
    return "trained"


@pytest.mark.slow
def test_a_file_damaged_where_another_rank_checks_is_refused_on_every_rank(saved_on_two,
                                                                          tmp_path):
    """On 2 ranks, rank 1 checks __0_0.distcp (the files are shared out in name order): a
    byte changed there stops both ranks before any load, each saying what to do."""
    import shutil
    path = str(tmp_path / "step-00000004")
    shutil.copytree(_saved(saved_on_two[0], "zero3", 4), path)
    with open(os.path.join(path, "__0_0.distcp"), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    said = run_ranks(_resume_damaged, 2, path, timeout=120)
    assert "__0_0.distcp: checksum" in said[1] and "damaged" in said[1], said[1]
    assert "another rank found its files changed" in said[0], said[0]
    assert all("resume='never'" in s for s in said)
