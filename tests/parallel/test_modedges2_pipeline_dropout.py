"""Dropout inside pipeline stages: each stage draws from a stream of its own, seeded from one
number drawn where fit is called, so a seed repeats a pipeline run exactly and another seed
gives other masks (the ranks used torch's default stream, whatever the seed, and every
stage drew the very same numbers)."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain.models import Model
from bigtrain.parallel.pipeline import Pipeline
from bigtrain.parallel.pipeline_stage import stage_seed
from tests.dist import run_ranks
from tests.parallel.test_pipeline import train_with


class Draw(nn.Module):
    """Records one number of the torch stream per training forward (the stage's stream)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(float(torch.rand(())))
        return x


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), Draw(), nn.Dropout(0.5),
                         nn.Linear(16, 16), Draw(), nn.Dropout(0.5), nn.Linear(16, 4))


def data(step):
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


def ce(out, y, sw):
    return F.cross_entropy(out, y)


def _two_stages(rank, world, seed):
    torch.manual_seed(seed)  # every rank seeded alike, as a launched script does
    model = make_model()
    state, _ = train_with(rank, world, Pipeline(stages=2, microbatches=2, schedule="gpipe",
                                                split=[3, 4]), lambda: model, data, ce, steps=2)
    mine = model[1] if rank == 0 else model[4]  # the Draw layer of this rank's stage
    return state, mine.seen


def test_each_stage_draws_from_its_own_stream():
    (_, first), (_, second) = run_ranks(_two_stages, 2, 0, timeout=60)
    assert len(first) == len(second) > 0
    assert not set(first) & set(second)


def test_stage_seeds_differ_by_stage_and_replica_not_by_run():
    seeds = {(pp, dp): stage_seed(7, pp, dp) for pp in range(4) for dp in range(2)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert seeds[(1, 0)] == stage_seed(7, 1, 0) != stage_seed(8, 1, 0)


def fit_pipeline(seed: int) -> dict:
    bigtrain.set_seed(0)
    model = Model(nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 4)))
    model.compile(optimizer="sgd", loss=F.cross_entropy)
    r = np.random.default_rng(0)
    x, y = r.normal(size=(16, 6)).astype("float32"), r.integers(0, 4, 16)
    bigtrain.set_seed(seed)  # the seed the dropout masks follow
    # split given: the measured balance may cut elsewhere on a busy machine, and a rank's
    # layers decide what it draws
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0, devices=2,
              strategy=Pipeline(microbatches=2, schedule="gpipe", split=[2, 1]))
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_the_seed_set_before_fit_repeats_or_changes_the_masks():
    a, b, other = fit_pipeline(0), fit_pipeline(0), fit_pipeline(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a)
