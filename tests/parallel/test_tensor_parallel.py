"""Tensor parallelism: plans, parity with one process (GPT and a Dense chain), bad input."""
import pytest
import torch
from torch import nn

from bigtrain.parallel.base import DistEnv, resolve_strategy
from bigtrain.parallel.tensor_parallel import TensorParallel, check_tp, tp_plan
from tests.dist import run_ranks
from tests.parallel.test_pipeline import (TOL, chain_loss, gpt_compute_loss, gpt_data,
                                          make_gpt, max_diff, train_reference, train_with)

BATCH = 8


def make_dense() -> nn.Module:
    """The seed Dense model, narrower: 100 -> 64 relu -> 10."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(100, 64), nn.ReLU(), nn.Linear(64, 10))


def make_dense3() -> nn.Module:
    """Two Linear pairs and a 3-class output that cannot be split 2 ways."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(100, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(),
                         nn.Linear(16, 3))


def dense_data(step):
    g = torch.Generator().manual_seed(3000 + step)
    return torch.randn(BATCH, 100, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


def _tp_runs(rank, world):
    strategy = TensorParallel(degree=2)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    gpt = strategy.setup_module(make_gpt())
    shards = {name: tuple(p.to_local().shape) for name, p in gpt.named_parameters()
              if hasattr(p, "to_local")}
    strategy.teardown()
    return {
        "shards": shards,
        "gpt": train_with(rank, world, TensorParallel(degree=2), make_gpt, gpt_data,
                          gpt_compute_loss),
        "dense": train_with(rank, world, TensorParallel(degree=2), make_dense, dense_data,
                            chain_loss),
        "dense3": train_with(rank, world, TensorParallel(degree=2, activation_checkpointing=True),
                             make_dense3, dense_data, chain_loss),
    }


def test_tensor_parallel_matches_single_process_training():
    refs = {"gpt": train_reference(make_gpt, gpt_data, gpt_compute_loss),
            "dense": train_reference(make_dense, dense_data, chain_loss),
            "dense3": train_reference(make_dense3, dense_data, chain_loss)}
    results = run_ranks(_tp_runs, 2, timeout=180)
    shards = results[0].pop("shards")
    results[1].pop("shards")
    assert shards["blocks.0.attn.q_proj.weight"] == (16, 32)  # 2 of 4 heads x hs 8
    assert shards["blocks.0.attn.c_proj.weight"] == (32, 16)
    assert shards["blocks.0.mlp.c_fc.weight"] == (64, 32)
    assert "head.lm_head.weight" not in shards and "embed.wte.weight" not in shards
    for name, (full, losses) in results[0].items():
        ref, ref_losses = refs[name]
        assert max_diff(full, ref) <= TOL, name
        assert losses == pytest.approx(ref_losses, abs=1e-5), name
        assert losses == pytest.approx(results[1][name][1], abs=1e-6), name


def test_gpt_plan_splits_heads_and_mlp_and_keeps_the_tied_head_whole():
    plan = tp_plan(make_gpt(), 2)
    assert plan["blocks.0.attn.q_proj"] == plan["blocks.3.attn.v_proj"] == "colwise"
    assert plan["blocks.0.attn.c_proj"] == plan["blocks.0.mlp.c_proj"] == "rowwise"
    assert plan["blocks.2.mlp.c_fc"] == "colwise"
    assert plan["head.lm_head"] == "replicate"  # tied to the token embedding


def test_chain_plan_alternates_and_replicates_indivisible_outputs():
    assert tp_plan(make_dense(), 2) == {"0": "colwise", "2": "rowwise"}
    assert tp_plan(make_dense3(), 2) == {"0": "colwise", "2": "rowwise", "4": "replicate"}
    # a LayerNorm between two Linears breaks the pair: the first must gather its output
    chain = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    assert tp_plan(chain, 2) == {"0": "colwise_gather", "2": "colwise_gather"}
    # regex overrides, like a Keras LayoutMap
    assert tp_plan(make_dense(), 2, {r"^2$": "replicate"})["2"] == "replicate"


def test_bad_input_is_reported_with_a_fix():
    with pytest.raises(ValueError, match="4 heads, not divisible by the tensor degree 3"):
        check_tp(make_gpt(), 3)
    with pytest.raises(ValueError, match="not divisible by the tensor degree 3"):
        TensorParallel(degree=3).setup_module(make_gpt())  # before any collective
    with pytest.raises(ValueError, match="world size 4 is not divisible by tp=3"):
        TensorParallel(degree=3).validate(world_size=4, global_batch_size=8)
    with pytest.raises(ValueError, match="valid styles: colwise"):
        TensorParallel(degree=2, plan={"fc": "diagonal"})


def test_registered_names():
    assert resolve_strategy("tensor") == TensorParallel()
    assert resolve_strategy("tensor_parallel") == TensorParallel()
