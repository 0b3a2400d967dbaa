"""BatchNorm inside a pipeline stage: its statistics are those of each micro-batch (as under
accumulate_steps), and the schedule's one-off metadata pass must leave them untouched without
breaking the backward that torch runs through that pass's graph."""
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.parallel.pipeline import Pipeline
from tests.dist import run_ranks
from tests.parallel.test_pipeline import BATCH, make_optimizer, max_diff, train_with

STEPS, TOL = 3, 1e-6


def make_bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.PReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8),
                         nn.Linear(8, 4))


def bn_data(step):
    g = torch.Generator().manual_seed(300 + step)
    return torch.randn(BATCH, 6, generator=g), torch.randint(0, 4, (BATCH,), generator=g)


def ce(out, y, sw):
    return F.cross_entropy(out, y)


def micro_batch_reference(micro: int) -> dict:
    """One process, BatchNorm over each of `micro` equal slices of the batch, gradients
    summed into one step (what accumulate_steps=micro does)."""
    model = make_bn_model()
    opt = make_optimizer(model.parameters())
    for step in range(STEPS):
        x, y = bn_data(step)
        for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
            (ce(model(xs), ys, None) * xs.shape[0] / x.shape[0]).backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


CASES = {  # name: (microbatches, schedule, layers per stage)
    "one micro, BatchNorm on the last stage": (1, "gpipe", [3, 2]),
    "two micros, 1f1b": (2, "1f1b", [3, 2]),
    "two micros, BatchNorm on the first stage": (2, "gpipe", [4, 1]),
}


def _train_cases(rank, world):
    return {name: train_with(rank, world, Pipeline(stages=2, microbatches=m, schedule=s,
                                                   split=split),
                             make_bn_model, bn_data, ce, steps=STEPS)[0]
            for name, (m, s, split) in CASES.items()}


def test_batch_norm_in_a_stage_trains_with_micro_batch_statistics():
    got = run_ranks(_train_cases, 2, timeout=90)[0]
    refs = {m: micro_batch_reference(m) for m in (1, 2)}
    for name, (m, _, _) in CASES.items():
        assert max_diff(got[name], refs[m]) <= TOL, name
    # the check can tell micro-batch statistics from whole-batch ones
    assert max_diff(refs[1], refs[2]) > 1e-3
