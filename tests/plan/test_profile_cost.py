"""Module profiling (meta-device pass), FLOPs and the communication / bubble formulas."""
import pytest
import torch
from torch import nn

from bigtrain.plan import (ModelProfile, pipeline_bubble, profile_module,
                           reduce_scatter_bytes, ring_allreduce_bytes, training_flops)
from bigtrain.plan.cost import comm_bytes
from bigtrain.plan.memory import PRECISIONS
from tests.plan.models import TinyGPT, mlp


def test_mlp_profile_counts_leaf_outputs_and_linear_flops():
    model = mlp(784, 512, 10)
    prof = profile_module(model)
    assert prof.n_params == 784 * 512 + 512 + 512 * 10 + 10
    # input 784 + Linear 512 + ReLU 512 + Linear 10 elements per sample
    assert prof.activation_elems_per_sample == 784 + 512 + 512 + 10
    assert prof.forward_flops_per_sample == 2 * (784 * 512 + 512 * 10)
    assert prof.largest_unit_params == 784 * 512 + 512
    assert "meta" in prof.method


def test_profile_leaves_the_module_untouched():
    model = mlp(16, 8, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_module(model)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_estimate_is_close_to_what_autograd_saves():
    """Leaf outputs approximate saved tensors: within a factor of 2 for the MLP."""
    model, batch = mlp(64, 128, 10), 8
    saved, seen = [0], set()
    params = {p.data_ptr() for p in model.parameters()}

    def pack(t):
        if t.data_ptr() not in seen and t.data_ptr() not in params:
            seen.add(t.data_ptr())
            saved[0] += t.nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 64)).sum()
    estimate = profile_module(model).activation_elems_per_sample * 4 * batch
    assert 0.5 < estimate / saved[0] < 2.0, (estimate, saved[0])


def test_gpt_profile_scales_with_sequence_length():
    model = TinyGPT()
    short = profile_module(model, seq_len=16)
    long = profile_module(model, seq_len=32)
    assert short.tokens_per_sample == 16
    assert long.activation_elems_per_sample / short.activation_elems_per_sample >= 1.9
    assert long.forward_flops_per_sample / short.forward_flops_per_sample >= 1.9
    # 6 N T rule of thumb vs counted: same order of magnitude
    ratio = training_flops(long, 1) / (6 * long.n_params * 32)
    assert 0.3 < ratio < 3.0


def test_unguessable_input_asks_for_example():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match="example_input"):
        profile_module(conv)
    prof = profile_module(conv, example_input=torch.zeros(1, 3, 8, 8))
    assert prof.activation_elems_per_sample == 3 * 64 + 2 * 4 * 36


def test_flops_fallback_is_six_n_tokens():
    prof = ModelProfile(n_params=1000, tokens_per_sample=128)
    assert training_flops(prof, 4) == 6 * 1000 * 128 * 4


def test_collective_formulas():
    assert ring_allreduce_bytes(1000, 4) == 2 * 3 / 4 * 1000
    assert ring_allreduce_bytes(1000, 1) == 0
    assert reduce_scatter_bytes(1000, 4) == 750
    assert pipeline_bubble(4, 1) == 0.75
    assert pipeline_bubble(1, 8) == 0.0
    assert pipeline_bubble(4, 12) == pytest.approx(3 / 15)


def test_zero3_moves_one_and_a_half_times_ddp():
    prof, prec = ModelProfile(n_params=10_000), PRECISIONS["bf16-mixed"]
    ddp = comm_bytes("ddp", prof, prec, world_size=8, batch_size=8)
    z3 = comm_bytes("zero3", prof, prec, world_size=8, batch_size=8)
    z2 = comm_bytes("zero2", prof, prec, world_size=8, batch_size=8)
    assert z3 == pytest.approx(1.5 * ddp) and z2 == pytest.approx(ddp)
