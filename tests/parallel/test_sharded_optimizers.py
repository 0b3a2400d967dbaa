"""Every built-in optimizer under every strategy that hands it DTensors (zero2, zero3,
fsdp_offload, tensor, Hybrid dp x tp) trains like one process (parity at 1e-5 after 5 steps),
on an MLP with odd widths and a softmax hidden layer; and the kernel choice itself."""
import copy
import warnings
from functools import partial

import pytest
import torch

from bigtrain.api.optimizer_kernels import kernel_options
from bigtrain.engine.record import _optimizer_fused
from bigtrain.parallel.base import DistEnv
from bigtrain.parallel.hybrid import Hybrid
from bigtrain.parallel.sharded import Sharded
from bigtrain.parallel.tensor_parallel import TensorParallel, tp_plan
from tests.dist import run_ranks
from tests.parallel.sharded_optimizer_cases import (build, case_data, check_parity, run_all,
                                                    softmax_mlp)

# (label, strategy factory); partials, so they travel to the spawned ranks
SHARDED = [("zero2", partial(Sharded, reshard_after_forward=False)),
           ("zero3", partial(Sharded, reshard_after_forward=True)),
           ("fsdp_offload", partial(Sharded, reshard_after_forward=True, offload=True))]
TENSOR = [("tensor", partial(TensorParallel, degree=2))]
HYBRID = [("hybrid_dp2_tp2", partial(Hybrid, dp=2, tp=2))]


def test_fused_kernels_only_for_plain_tensors():
    plain = [torch.nn.Parameter(torch.zeros(3))]
    assert kernel_options(torch.optim.SGD, plain, {}) == {"fused": True}
    assert kernel_options(torch.optim.Adam, [{"params": plain}], {}) == {"fused": True}
    assert kernel_options(torch.optim.Adam, plain, {"fused": False}) == {}  # the user's say
    assert kernel_options(torch.optim.RMSprop, plain, {}) == {}  # no fused kernel in torch
    sparse = [torch.nn.Parameter(torch.zeros(3).to_sparse())]
    assert kernel_options(torch.optim.SGD, sparse, {}) == {}


def _sharded_kernels(rank, world):
    """The kernel options for FSDP's DTensors alone and for DTensors mixed with tensors."""
    strategy = TensorParallel(degree=2)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    tp = strategy.setup_module(build("sgd")[0].net)
    mixed = kernel_options(torch.optim.Adam, list(tp.parameters()), {})
    strategy.teardown()
    fsdp = Sharded()
    fsdp.setup(DistEnv(rank=rank, world_size=world))
    model, task = build("sgd")
    params = list(fsdp.setup_module(model.net).parameters())
    sharded = kernel_options(torch.optim.SGD, params, {})
    # the run record: the fused kernel cannot run on DTensors, so it is not "unfused"
    recorded = (_optimizer_fused(task.make_optimizer(params)),
                _optimizer_fused(task.make_optimizer(list(build("sgd")[0].parameters()))))
    strategy = TensorParallel(degree=2)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy.setup_module(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()))
    strategy.teardown()
    return mixed, sharded, [str(w.message) for w in caught], recorded


def test_dtensors_get_a_kernel_that_takes_them_and_an_unsplit_model_warns():
    mixed, sharded, warned, recorded = run_ranks(_sharded_kernels, 2, timeout=120)[0]
    assert recorded == (None, True)
    assert mixed == {"fused": False, "foreach": False}  # a list mixing Tensor and DTensor
    assert sharded == {"fused": False}  # torch picks foreach (GPU) or the loop (CPU)
    assert any("splits no layer" in w for w in warned), warned  # 3 outputs: not split 2 ways


def test_zero2_zero3_offload_train_like_one_process_with_every_optimizer():
    results = run_ranks(run_all, 2, SHARDED, timeout=300)[0]
    check_parity(results, SHARDED)


def test_hybrid_dp_tp_trains_like_one_process_with_every_optimizer():
    results = run_ranks(run_all, 4, HYBRID, timeout=300)[0]
    check_parity(results, HYBRID)


def _tp_forward(rank, world):
    """Max |TP forward - one-process forward| for softmax as a name, nn.Softmax, a lambda."""
    out = {}
    acts = {"name": "softmax", "module": torch.nn.Softmax(dim=-1),
            "function": lambda t: torch.softmax(t, dim=-1)}
    x = torch.as_tensor(case_data(16)[0])
    for label, act in acts.items():
        torch.manual_seed(0)
        model = softmax_mlp(act).net
        expected = copy.deepcopy(model)(x)
        strategy = TensorParallel(degree=2)
        strategy.setup(DistEnv(rank=rank, world_size=world))
        got = strategy.setup_module(model)(x)
        strategy.teardown()
        out[label] = float((got - expected).abs().max())
    return out, run_all(rank, world, TENSOR)


def test_tensor_parallel_gathers_before_a_softmax_hidden_layer():
    plan = tp_plan(softmax_mlp(), 2)
    styles = list(plan.values())
    assert styles == ["colwise_gather", "colwise", "rowwise", "replicate"], plan
    for act in (torch.nn.Softmax(dim=-1), lambda t: t / t.sum(-1, keepdim=True)):
        assert list(tp_plan(softmax_mlp(act), 2).values())[0] == "colwise_gather"
    assert list(tp_plan(softmax_mlp(torch.relu), 2).values())[:2] == ["colwise", "rowwise"]
    (forward, results), _ = run_ranks(_tp_forward, 2, timeout=300)
    assert forward == pytest.approx({"name": 0, "module": 0, "function": 0}, abs=1e-6)
    check_parity(results, TENSOR)
