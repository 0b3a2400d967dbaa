"""The planner's memory-bound optimizer-update term and identity leaves in the profile."""
import pytest
import torch
from torch import nn

from bigtrain.plan import DeviceSpec, plan, profile_module
from bigtrain.plan.cost import update_bytes
from bigtrain.plan.memory import PRECISIONS
from bigtrain.zoo.mlp import MLP


def test_update_bytes_follow_the_optimizer_share():
    fp32 = PRECISIONS["32"]
    # fp32 Adam: read p, g, m, v and write p, m, v: 7 x 4 bytes per parameter
    assert update_bytes("ddp", 1e6, fp32, 8, world_size=4) == 28e6
    assert update_bytes("zero3", 1e6, fp32, 8, world_size=4) == 7e6
    assert update_bytes("zero1", 1e6, fp32, 0, world_size=2) == 6e6  # plain SGD: 12 B / 2


def test_step_time_counts_the_update_at_memory_speed():
    """Compute is free here (1e18 FLOP/s): what is left of a step is the Adam update of
    1,001,000 parameters at 28 bytes each over 28 MB/s, one second on one rank."""
    model = nn.Sequential(nn.Linear(1000, 1000))
    spec = DeviceSpec("cpu", 1e12, 1e18, 1e12, latency=0.0, memory_bandwidth=28e6)
    one = plan(model, devices=1, batch_size=8, device=spec).get("single").time
    assert one.update == pytest.approx(1.001, rel=1e-6)
    assert one.total == pytest.approx(one.compute + one.update)
    four = plan(model, devices=4, batch_size=8, device=[spec] * 4)
    assert four.get("zero3").time.update == pytest.approx(1.001 / 4, rel=1e-6)
    assert four.get("ddp").time.update == pytest.approx(1.001, rel=1e-6)


def test_without_memory_bandwidth_there_is_no_update_term():
    spec = DeviceSpec("cpu", 1e12, 1e10, 1e9)
    assert plan(10_000, devices=1, batch_size=8, device=spec).get("single").time.update == 0.0


def test_identity_leaves_add_no_activations():
    """MLP with dropout 0: nn.Dropout returns its input object; autograd keeps one copy."""
    model = MLP(16, [32, 32], 4, dropout=0.0)
    prof = profile_module(model, example_input=torch.zeros(1, 16))
    # input 16 + Linear 32, ReLU 32 (x2) + head 4; the two Dropout outputs are the ReLU's
    assert prof.activation_elems_per_sample == 16 + 2 * (32 + 32) + 4
