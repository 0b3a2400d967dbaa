"""Optimizer on the host ("ddp_cpu_optimizer", HostOptimizer): the host masters are separate
fp32 copies that the optimizer steps and copies back, learning-rate edits reach the host
optimizer, and 2-rank training matches plain "ddp" and single-process training to 1e-5 after
5 steps (also with speed-aware data parallel running its optimizer on the host)."""
import pytest
import torch
from torch import nn

from bigtrain.parallel.balanced import BalancedDataParallel
from bigtrain.parallel.base import resolve_strategy
from bigtrain.parallel.cpu_optimizer import CpuOptimizerDataParallel, HostOptimizer
from tests.dist import run_ranks
from tests.parallel.strategy_cases import max_param_diff, reference_state, run_strategy

TOL = 1e-5


def _adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def _pair():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    b = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    b.load_state_dict(a.state_dict())
    return a, b


def _steps(model, opt, n=3):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(4, 8, generator=g)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()


def test_host_optimizer_matches_the_plain_optimizer():
    a, b = _pair()
    start = [p.detach().clone() for p in b.parameters()]
    plain, host = _adam(a.parameters()), HostOptimizer(b.parameters(), _adam)
    assert all(m.device.type == "cpu" and m.dtype == torch.float32 for m in host.master)
    assert not any(m is p for m, p in zip(host.master, b.parameters()))  # real copies
    _steps(a, plain)
    _steps(b, host)
    for pa, pb, m, p0 in zip(a.parameters(), b.parameters(), host.master, start):
        assert torch.allclose(pa, pb, atol=1e-7) and torch.equal(pb, m)
        assert not torch.equal(pb, p0)  # the host step reached the module's weights
    assert all(p.grad is None for p in b.parameters())  # zero_grad cleared the device grads
    assert len(host.state) == 4 and host.host_bytes() > 0  # Adam state lives on the host


def test_learning_rate_edits_reach_the_host_optimizer():
    _, b = _pair()
    host = HostOptimizer(b.parameters(), _adam)
    for group in host.param_groups:
        group["lr"] = 0.0
    before = [p.detach().clone() for p in b.parameters()]
    _steps(b, host, 2)
    assert all(torch.equal(x, y) for x, y in zip(before, b.parameters()))
    state = host.state_dict()
    again = HostOptimizer(b.parameters(), _adam)
    again.load_state_dict(state)
    assert again.param_groups[0]["lr"] == 0.0


def test_refusals_say_what_to_do():
    with pytest.raises(ValueError, match="no trainable parameters"):
        HostOptimizer([], _adam)
    _, b = _pair()
    with pytest.raises(ValueError, match="closure"):
        HostOptimizer(b.parameters(), _adam).step(lambda: 0.0)
    with pytest.raises(ValueError, match="optimizer_device"):
        BalancedDataParallel(optimizer_device="gpu")
    assert resolve_strategy("ddp_cpu_optimizer") == CpuOptimizerDataParallel()


def _host_runs(rank, world_size):
    out = {name: run_strategy("seed", name) for name in ("ddp", "ddp_cpu_optimizer")}
    out["ddp_cpu_optimizer_acc2"] = run_strategy("seed", "ddp_cpu_optimizer", accumulate=2)
    out["embed"] = run_strategy("embed", "ddp_cpu_optimizer")
    out["balanced_host"] = run_strategy("seed", BalancedDataParallel(
        balance="fixed", weights=[3, 1], optimizer_device="cpu"))
    return out if rank == 0 else None


@pytest.mark.slow
def test_cpu_optimizer_parity_with_ddp_and_single():
    got = run_ranks(_host_runs, 2, timeout=300)[0]
    ref, ref_embed = reference_state("seed"), reference_state("embed")
    assert max_param_diff(got["ddp"], got["ddp_cpu_optimizer"]) <= TOL
    for name in ("ddp_cpu_optimizer", "ddp_cpu_optimizer_acc2", "balanced_host"):
        assert max_param_diff(ref, got[name]) <= TOL, name
    assert max_param_diff(ref_embed, got["embed"]) <= TOL
    assert max_param_diff(ref, reference_state("seed", steps=4)) > 100 * TOL
