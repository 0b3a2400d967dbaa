"""zero3's predicted peak against what FSDP2 holds on 2 gloo ranks.

FSDP2 (fully_shard, reshard_after_forward=True) holds, at its peak in backward, one unit's
gathered parameters and its unsharded gradient, plus the next unit gathered ahead (backward
prefetch). The measured figure is the peak of live tensors on a rank during a training step
(torch's FSDPMemTracker: sharded parameters, gradients, Adam state, gather and
reduce-scatter buffers), for a model dominated by one layer and for a uniform MLP.
"""
import pytest
import torch
from torch import nn

from bigtrain.plan import plan
from bigtrain.plan.memory import get_precision
from bigtrain.plan.planner import _comm_buffers
from bigtrain.plan.profile import ModelProfile
from tests.dist import run_ranks

TOL = 0.15


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "one_big_layer":  # 4.2 M of its 4.35 M parameters in one Linear
        return nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                             nn.Linear(2048, 10))
    layers = [nn.Linear(64, 512), nn.ReLU()]
    for _ in range(6):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(512, 10))


def _peak_bytes(rank, world_size, kind):
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.fsdp import fully_shard

    from bigtrain.parallel.sharded import shard_units
    model = _model(kind)
    for unit in shard_units(model):  # as bigtrain's Sharded strategy wraps it
        fully_shard(unit, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 64), torch.randint(0, 10, (2,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # Adam's state exists from here on
    tracker = FSDPMemTracker(model, opt)
    tracker.track_inputs((x,))
    with tracker:
        step()
    return max(d["Total"] for d in tracker.get_tracker_snapshot("peak").values())


def test_buffers_are_one_unit_gathered_with_its_gradient_and_the_next_prefetched():
    prof = ModelProfile(n_params=1000, largest_unit_params=100, second_unit_params=30)
    for name, prec in (("32", get_precision("32")), ("bf16", get_precision("bf16-mixed"))):
        expected = 100 * (prec.param_bytes + prec.grad_bytes) + 30 * prec.param_bytes
        assert _comm_buffers("zero3", prof, prec, 1) == expected, name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["one_big_layer", "uniform"])
def test_zero3_peak_matches_fsdp2(kind):
    measured = max(run_ranks(_peak_bytes, 2, kind, timeout=60))
    est = plan(_model(kind), devices=2, batch_size=4, optimizer="adam").get("zero3")
    predicted = est.memory.device_total
    assert abs(predicted - measured) / measured < TOL, (predicted / 1e6, measured / 1e6)
