"""Model-state formulas against the ZeRO paper and against bytes counted from real tensors."""
import pytest
import torch
from torch import nn

from bigtrain.plan import count_params, model_state_bytes, optimizer_bytes, ps_server_bytes
from bigtrain.plan.memory import activation_bytes, get_precision
from bigtrain.plan.planner import _comm_buffers
from bigtrain.plan.profile import ModelProfile
from tests.plan.models import TinyGPT, mlp


@pytest.mark.parametrize("strategy, expected_gb", [
    ("ddp", 120.0), ("zero1", 31.4), ("zero3", 1.9)])
def test_zero_paper_figure1(strategy, expected_gb):
    # ZeRO paper, figure 1: Psi = 7.5B, K = 12 (mixed-precision Adam), Nd = 64, 1 GB = 1e9 B
    b = model_state_bytes(strategy, 7.5e9, world_size=64, precision="bf16-mixed",
                          optimizer="adam")
    assert round(b.model_states / 1e9, 1) == expected_gb


def test_zero2_is_fsdp2_sharded_at_rest_and_gathered_at_its_peak():
    # not the paper's 16.6 GB: FSDP2 frees gathered parameters after backward (memory.py)
    z2, z3 = (model_state_bytes(s, 7.5e9, world_size=64, precision="bf16-mixed")
              for s in ("zero2", "zero3"))
    assert z2 == z3
    prof = ModelProfile(n_params=1000, largest_unit_params=100)
    prec = get_precision("32")
    assert _comm_buffers("zero2", prof, prec, 1) == 4 * 1000 + 4 * 100  # every unit gathered
    # one unit gathered with its gradient, one gathered ahead (unit sizes unknown: as big)
    assert _comm_buffers("zero3", prof, prec, 1) == 100 * (4 + 4) + 100 * 4


def test_byte_counts_per_parameter():
    assert optimizer_bytes("adam", "bf16-mixed") == 12  # fp32 master + momentum + variance
    fp32 = model_state_bytes("single", 1, world_size=1, precision="32", optimizer="adam")
    assert (fp32.params, fp32.grads, fp32.optimizer) == (4, 4, 8)
    sgd = model_state_bytes("ddp", 1, world_size=4, precision="32", optimizer="sgd")
    assert sgd.model_states == 8
    off = model_state_bytes("fsdp_offload", 1000, world_size=4, precision="32")
    assert off.model_states == 0 and off.offloaded_host == 16 * 1000 / 4


def test_ps_server_holds_optimizer_state():
    worker = model_state_bytes("ps", 1000, world_size=3, precision="32", optimizer="adam")
    server = ps_server_bytes(1000, precision="32", optimizer="adam")
    assert worker.optimizer == 0 and worker.grads == 4000
    assert server.optimizer == 8000 and server.grads == 0 and server.role == "server"


def test_unknown_names_raise_with_choices():
    with pytest.raises(ValueError, match="bf16-mixed"):
        model_state_bytes("ddp", 10, world_size=1, precision="fp8")
    with pytest.raises(ValueError, match="adam"):
        optimizer_bytes("shampoo", "32")
    with pytest.raises(ValueError, match="zero3"):
        model_state_bytes("zero4", 10, world_size=2)


def _real_state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Sum of nbytes of parameters, gradients and optimizer state tensors (deduplicated)."""
    seen, total = set(), 0
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters()]
    tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    for t in tensors:
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.nbytes
    return total


def _one_step(model, opt, x, target_fn):
    loss = target_fn(model(x))
    loss.backward()
    opt.step()


@pytest.mark.parametrize("opt_name, make_opt", [
    ("adam", lambda p: torch.optim.Adam(p, lr=1e-3)),
    ("sgd_momentum", lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)),
])
def test_prediction_matches_real_mlp_and_optimizer(opt_name, make_opt):
    torch.manual_seed(0)
    model = mlp(64, 128, 10)
    opt = make_opt(model.parameters())
    _one_step(model, opt, torch.randn(8, 64), lambda out: out.square().mean())
    predicted = model_state_bytes("single", count_params(model), world_size=1,
                                  precision="32", optimizer=opt_name).model_states
    real = _real_state_bytes(model, opt)
    assert abs(predicted - real) / real < 0.15, (predicted, real)


def test_prediction_matches_real_gpt_with_tied_weights():
    torch.manual_seed(0)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 64, (2, 16))
    _one_step(model, opt, idx, lambda out: out.float().logsumexp(-1).mean())
    predicted = model_state_bytes("single", count_params(model), world_size=1,
                                  precision="32", optimizer="adamw").model_states
    real = _real_state_bytes(model, opt)
    assert abs(predicted - real) / real < 0.15, (predicted, real)


def test_activation_bytes_by_strategy():
    # 100 bytes per sample, global batch 64, 4 ranks, 2 micro-batches
    kw = dict(world_size=4, batch_size=64, microbatches=2)
    assert activation_bytes("ddp", 100, **kw) == 100 * 8            # 16 per rank / 2 micro
    assert activation_bytes("pipeline", 100, **kw, schedule="gpipe") == 100 * 32 * 2 / 4
    assert activation_bytes("pipeline", 100, world_size=4, batch_size=64, microbatches=8,
                            schedule="1f1b") == 100 * 8 * 4 / 4       # min(m, p) in flight
    assert activation_bytes("tensor", 100, **kw, linear_share=1.0) == 100 * 32 / 4
    assert activation_bytes("ps", 100, **kw) == 100 * 11              # 3 workers: ceil(64/3)=22
