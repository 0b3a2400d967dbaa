"""Planner edge cases: BatchNorm models, impossible tensor splits, several inputs."""
import pytest
import torch
from torch import nn

from bigtrain.plan import plan, profile_module


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.bn, self.l2 = nn.Linear(37, 13), nn.BatchNorm1d(13), nn.Linear(13, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.bn(self.l1(x))))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.o = nn.Linear(4, 8), nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x1, x2):
        return self.o(torch.relu(self.a(x1) + self.b(x2)))


def test_batchnorm_model_profiles_like_its_plain_twin_and_stays_unchanged():
    model = WithBatchNorm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prof = profile_module(model)
    plain = profile_module(nn.Sequential(nn.Linear(37, 13), nn.Identity(), nn.Linear(13, 3)))
    # input 37, Linear 13, BatchNorm 13, Linear 3 (torch.relu is no leaf module)
    assert prof.activation_elems_per_sample == 37 + 13 + 13 + 3
    assert prof.forward_flops_per_sample == plain.forward_flops_per_sample
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_batchnorm_real_pass_restores_running_stats(monkeypatch):
    import bigtrain.plan.profile as profile
    model = WithBatchNorm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = profile._traced_pass

    def no_meta(module, example, on_meta):  # as for a model with an op lacking meta kernels
        if on_meta:
            raise RuntimeError("no meta kernel")
        return real(module, example, on_meta)
    monkeypatch.setattr(profile, "_traced_pass", no_meta)
    *_, how = profile._measure(model, (torch.randn(1, 37),))
    assert how.startswith("real forward pass of 2 samples")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_plan_of_a_batchnorm_model_has_a_best():
    assert plan(WithBatchNorm(), devices=2, batch_size=32).best is not None


def test_impossible_tensor_split_is_skipped_with_its_reason():
    refused = {"tensor": "blocks.0.attn has 3 heads, not divisible by the tensor degree 2"}
    p = plan(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), devices=2,
             batch_size=32, refused=refused)
    assert p.skipped["tensor"] == refused["tensor"]
    assert all(e.strategy != "tensor" for e in p.estimates)


def test_several_inputs_need_an_example_input():
    with pytest.raises(ValueError, match=r"takes 2 inputs \(x1, x2\).*example_input"):
        profile_module(TwoInputs())
    prof = profile_module(TwoInputs(), example_input=(torch.zeros(1, 4), torch.zeros(1, 6)))
    assert prof.n_params == 4 * 8 + 8 + 6 * 8 + 8 + 8 * 2 + 2


@pytest.mark.parametrize("module, match", [
    (lambda: torch.nn.Sequential(torch.nn.ReLU()), "has no parameters"),  # was StopIteration
    (lambda: torch.nn.Sequential(torch.nn.LazyLinear(4)), "lazy layers"),
])
def test_models_the_planner_cannot_measure_say_why(module, match):
    from bigtrain.plan import plan
    with pytest.raises(ValueError, match=match):
        plan(module(), devices=2, batch_size=8)
