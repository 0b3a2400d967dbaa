"""A trainable parameter the forward never uses (an unused layer) under the DDP strategies.

Before, ddp, zero1 and ddp_cpu_optimizer applied a first update whose unused bucket was the
rank's own gradient, not the replicas' mean, and stopped at step 2 with torch's "Expected to
have finished reduction in the prior iteration"; zero2/zero3/fsdp and ddp_balanced trained
and left the layer as one process does. Now the DDP strategies find such parameters on the
fit's first rows and train as the others do (with a warning that says why and what it
costs), and where they had no rows to look at, the first step stops before any update
naming the parameters and the fix."""
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain.models import Model

from bigtrain.parallel.base import resolve_strategy
from bigtrain.parallel.unused_params import unreached
from tests.dist import run_ranks
from tests.parallel.test_pipeline import max_diff, train_reference, train_with

DDP_LIKE = ("ddp", "zero1", "ddp_cpu_optimizer")
OTHERS = ("zero2", "zero3", "fsdp", "ddp_balanced")


class WithUnused(nn.Module):
    """6 -> 8 relu -> 4, and a layer the forward never calls."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.unused = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))  # (B, 4)


def make() -> nn.Module:
    torch.manual_seed(0)
    return WithUnused()


def data(step):
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


def ce(out, y, sw):
    return F.cross_entropy(out, y)


def _train(rank, world, name, sample):
    strategy = resolve_strategy(name)
    if sample:  # as fit does: the first rows, before setup_module
        strategy.use_input_sample(data(0)[0][:2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            state, _ = train_with(rank, world, strategy, make, data, ce, steps=3)
        except RuntimeError as e:
            return "error", str(e)
    said = [str(w.message) for w in caught if "get no gradient" in str(w.message)]
    return state, said


def _all(rank, world, names, sample):
    return {name: _train(rank, world, name, sample) for name in names}


def test_unreached_reads_the_autograd_graph_without_changing_the_model():
    model = make()
    model.train()
    assert unreached(model, torch.randn(2, 6)) == ["unused.weight", "unused.bias"]
    assert model.training
    model.unused.requires_grad_(False)
    assert unreached(model, torch.randn(2, 6)) == []


def test_every_strategy_trains_a_model_with_an_unused_layer_as_one_process():
    ref, _ = train_reference(make, data, ce, steps=3)
    ref = {k: v.numpy() for k, v in ref.items()}
    first, second = run_ranks(_all, 2, DDP_LIKE + OTHERS, True, timeout=90, pg_timeout=15)
    for name, (state, said) in first.items():
        assert state != "error", (name, said)
        assert max_diff(state, ref) < 1e-5, name
        assert np.array_equal(state["unused.weight"], ref["unused.weight"]), name
        if name in DDP_LIKE:  # rank 0 says why DDP looks for unused parameters, and the cost
            assert len(said) == 1 and "unused.weight" in said[0], name
            assert "find_unused_parameters=True" in said[0] and "cost" in said[0]
            assert not second[name][1]  # once, not once per rank
        else:
            assert not said, name


def test_without_sample_rows_the_first_step_names_the_parameters_before_any_update():
    results = run_ranks(_all, 2, DDP_LIKE, False, timeout=60, pg_timeout=15)
    for per_rank in results:
        for name, (kind, message) in per_rank.items():
            assert kind == "error", name
            assert "unused.weight, unused.bias" in message and "first training step" in message
            assert "find_unused_parameters=True" in message
            assert "Expected to have finished reduction" not in message


def _explicit(rank, world):
    from bigtrain.parallel.data_parallel import DataParallel
    state, _ = train_with(rank, world, DataParallel(find_unused_parameters=True), make, data,
                          ce, steps=3)
    return state


def test_find_unused_parameters_given_trains_without_the_check():
    ref, _ = train_reference(make, data, ce, steps=3)
    state, _ = run_ranks(_explicit, 2, timeout=60, pg_timeout=15)
    assert max_diff(state, {k: v.numpy() for k, v in ref.items()}) < 1e-5


def _fit(**kw):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.integers(0, 4, 16)
    bigtrain.set_seed(0)
    model = Model(make())
    model.compile(optimizer="sgd", loss=F.cross_entropy)
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, **kw)
    return {k: v.detach() for k, v in model.net.state_dict().items()}


def test_fit_with_ddp_trains_an_unused_layer_as_one_process():
    one = _fit()
    two = _fit(strategy="ddp", devices=2, timeout=60)  # fit hands DDP its first rows
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    assert torch.equal(one["unused.weight"], two["unused.weight"])
