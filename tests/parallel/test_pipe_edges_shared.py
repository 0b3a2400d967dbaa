"""One module at two positions of an nn.Sequential under the pipeline: both positions are
cut (forward runs both), their weights are tied (gradients summed across ranks), and the
full state holds both names; a repeated module with buffers is refused before any rank."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.parallel.pipeline import Pipeline
from tests.dist import run_ranks
from tests.parallel.test_pipeline import BATCH, max_diff, train_reference, train_with

STEPS, TOL = 3, 1e-6


def make_shared() -> nn.Module:
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), lin, nn.Tanh(), lin, nn.Tanh(),
                         nn.Linear(8, 3))


def shared_data(step):
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(BATCH, 6, generator=g), torch.randint(0, 3, (BATCH,), generator=g)


def ce(out, y, sw):
    return F.cross_entropy(out, y)


CASES = {  # name: (schedule, layers per stage)
    "uses on two ranks": ("gpipe", [3, 4]),
    "uses on one stage": ("1f1b", [6, 1]),
}


def _train_cases(rank, world):
    return {name: train_with(rank, world, Pipeline(stages=2, microbatches=2, schedule=s,
                                                   split=split),
                             make_shared, shared_data, ce, steps=STEPS)[0]
            for name, (s, split) in CASES.items()}


def test_a_module_at_two_positions_trains_like_one_process():
    ref, _ = train_reference(make_shared, shared_data, ce, steps=STEPS)
    got = run_ranks(_train_cases, 2, timeout=90)[0]
    for name in CASES:
        assert max_diff(got[name], ref) <= TOL, name
        assert torch.equal(torch.as_tensor(got[name]["2.weight"]),
                           torch.as_tensor(got[name]["4.weight"])), name
    assert max_diff(ref, make_shared().state_dict()) > 1e-3  # the weights did move


def test_a_repeated_module_with_buffers_is_refused_before_any_rank():
    bn = nn.BatchNorm1d(8)
    model = nn.Sequential(nn.Linear(6, 8), bn, nn.Tanh(), nn.Linear(8, 8), bn, nn.Linear(8, 3))
    with pytest.raises(ValueError, match="layers '1' and '4' .* one module"):
        Pipeline(stages=2).check_model(model, world_size=2)
