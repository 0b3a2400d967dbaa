"""Hybrid meshes on 4 ranks: dp x tp, dp x pp and pp x tp match one-process training."""
import pytest
import torch

from bigtrain.parallel.hybrid import Hybrid
from tests.dist import run_ranks
from tests.parallel.test_pipeline import (TOL, gpt_compute_loss, gpt_data, make_gpt, max_diff,
                                          train_reference, train_with)

MESHES = {"dp2xtp2": dict(dp=2, tp=2), "dp2xpp2": dict(dp=2, pp=2, schedule="gpipe"),
          "pp2xtp2": dict(pp=2, tp=2, activation_checkpointing=True)}


def _hybrid_runs(rank, world):
    out = {}
    for name, kwargs in MESHES.items():
        strategy = Hybrid(**kwargs)
        full, losses = train_with(rank, world, strategy, make_gpt, gpt_data, gpt_compute_loss,
                                  steps=3)
        out[name] = (full, losses)
    return out


def test_hybrid_meshes_match_single_process_training():
    ref, ref_losses = train_reference(make_gpt, gpt_data, gpt_compute_loss, steps=3)
    results = run_ranks(_hybrid_runs, 4, timeout=300)
    for name in MESHES:
        assert max_diff(results[0][name][0], ref) <= TOL, name
        # each replica reports the mean loss of its half of the batch; ranks of one
        # replica agree, and the two replicas' mean is the global mean loss
        by_rank = [torch.tensor(results[r][name][1]) for r in range(4)]
        dims = Hybrid(**MESHES[name]).dims(4)
        replica = [[r for r in range(4) if dims.coords(r)["dp"] == i] for i in range(dims.dp)]
        for ranks in replica:
            for r in ranks:
                assert torch.allclose(by_rank[r], by_rank[ranks[0]], atol=1e-6), (name, r)
        mean = torch.stack([by_rank[ranks[0]] for ranks in replica]).mean(0)
        assert torch.allclose(mean, torch.tensor(ref_losses), atol=1e-5), name


def test_degrees_must_multiply_to_the_world_size():
    with pytest.raises(ValueError, match=r"change one degree: dp=1 or tp=1"):
        Hybrid(dp=2, tp=2).validate(world_size=2, global_batch_size=8)
    with pytest.raises(ValueError, match="microbatches=4 does not divide"):
        Hybrid(dp=2, pp=2, microbatches=4).validate(world_size=4, global_batch_size=12)
    assert Hybrid(dp=2, tp=2).owns_step is False and Hybrid(dp=2, pp=2).owns_step is True
