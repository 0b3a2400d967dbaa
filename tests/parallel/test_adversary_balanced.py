"""ddp_balanced where its own gradient all-reduce and its host optimizer differ from ddp's.

- A parameter that no rank gets a gradient for stays as one process leaves it: the
  all-reduce gave it a zero gradient, so the optimizer stepped it (Ftrl's first step set
  it to 0, weight decay shrank it), silently.
- With optimizer_device="cpu", float16 and weight penalties or constraints are refused
  before any rank starts: the host optimizer's step crashed inside torch's GradScaler ("No
  inf checks were recorded"), and penalties and constraints acted on the device weights,
  not on the host copies that step, so they silently did nothing.
"""
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import bigtrain
from bigtrain import optimizers as O
from bigtrain.constraints import MaxNorm
from bigtrain.launch import launcher
from bigtrain.layers import Dense, Input
from bigtrain.losses import SparseCategoricalCrossentropy
from bigtrain.models import Model
from bigtrain.parallel.balanced import BalancedDataParallel
from bigtrain.parallel.comm import all_reduce_grads
from bigtrain.regularizers import L2
from tests.dist import run_ranks

RNG = np.random.default_rng(0)
X = RNG.standard_normal((40, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 40)


class WithUnused(nn.Module):
    """`spare` is never called: no rank ever has a gradient for it."""

    def __init__(self):
        super().__init__()
        self.fc, self.out, self.spare = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def _fit(optimizer, **kw):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = Model(WithUnused())
    model.compile(optimizer=optimizer, loss=SparseCategoricalCrossentropy(from_logits=True))
    start = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.fit(X, Y, epochs=2, batch_size=10, shuffle=False, verbose=0, **kw)
    return start, model.net.state_dict()


@pytest.mark.parametrize("device", [None, "cpu"])
def test_a_parameter_no_rank_uses_stays_as_one_process_leaves_it(device):
    optimizer = lambda: O.Ftrl(learning_rate=0.1)  # noqa: E731 - a zero gradient zeroes a weight
    start, one = _fit(optimizer())
    _, two = _fit(optimizer(), strategy=BalancedDataParallel(optimizer_device=device),
                  devices=2, watchdog_timeout=30)
    assert torch.equal(one["spare.weight"], start["spare.weight"])
    diffs = {k: float((one[k] - two[k]).abs().max()) for k in one}
    assert max(diffs.values()) < 1e-5, diffs


def _reduce_some(rank, world_size):
    """p0 has a gradient on rank 0 only, p1 on every rank, p2 on none."""
    ps = [nn.Parameter(torch.zeros(3)) for _ in range(3)]
    if rank == 0:
        ps[0].grad = torch.full((3,), 4.0)
    ps[1].grad = torch.full((3,), float(rank + 1))
    all_reduce_grads(ps, materialize=True)
    assert dist.get_world_size() == world_size
    return [None if p.grad is None else p.grad.tolist() for p in ps]


def test_materialized_all_reduce_keeps_none_where_no_rank_had_a_gradient():
    got = run_ranks(_reduce_some, 2, timeout=60)
    assert got[0] == got[1] == [[2.0] * 3, [1.5] * 3, None]


def _seed_model(**dense_kw):
    bigtrain.clear_session()
    inp = Input(shape=(6,))
    model = Model(inp, Dense(3, activation="softmax")(Dense(4, **dense_kw)(inp)))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def _refusal(model, **kw) -> str:
    def no_launch(*args, **kwargs):
        raise AssertionError("a rank was started")
    with mock.patch.object(launcher, "launch", no_launch), pytest.raises(ValueError) as err:
        model.fit(X, Y, batch_size=10, verbose=0, devices=2,
                  strategy=BalancedDataParallel(optimizer_device="cpu"), **kw)
    return str(err.value)


def test_host_optimizer_refuses_float16_before_any_rank():
    assert "precision='bf16-mixed'" in _refusal(_seed_model(), precision="16-mixed")


@pytest.mark.parametrize("dense_kw", [{"kernel_regularizer": L2(0.1)},
                                      {"kernel_constraint": MaxNorm(0.3)}])
def test_host_optimizer_refuses_penalties_and_constraints_before_any_rank(dense_kw):
    msg = _refusal(_seed_model(**dense_kw))
    assert "'ddp_balanced' with its optimizer on the host" in msg and "use ddp" in msg
