"""A torch optimizer instance keeps its own param groups (per-group lr and weight decay) and
its parameter list (a head fine-tuned alone), as in a torch loop: fit rebuilt it from its
defaults over every parameter, without a word."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model, load_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 6)).astype("float32")
Y = RNG.integers(0, 4, 32)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))


def _groups(net):
    named = list(net.named_parameters())
    return [{"params": [p for n, p in named if n.endswith("weight")], "lr": 0.01,
             "weight_decay": 0.5},
            {"params": [p for n, p in named if n.endswith("bias")], "lr": 0.1,
             "weight_decay": 0.0}]


def _torch_loop(make_opt):
    net = _net()
    opt = make_opt(net)
    for i in range(0, 32, 8):
        opt.zero_grad()
        F.cross_entropy(net(torch.from_numpy(X[i:i + 8])), torch.from_numpy(Y[i:i + 8])).backward()
        opt.step()
    return [p.detach().numpy() for p in net.parameters()]


def _fit(make_opt, **kw):
    bigtrain.set_seed(0)
    net = _net()
    model = Model(net)
    model.compile(optimizer=make_opt(net), loss=F.cross_entropy)
    model.fit(X, Y, epochs=1, batch_size=8, shuffle=False, verbose=0, **kw)
    return [np.asarray(w) for w in model.get_weights()]


def _diff(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


GROUPS = lambda net: torch.optim.AdamW(_groups(net))  # noqa: E731
HEAD = lambda net: torch.optim.SGD(net[2].parameters(), lr=0.1)  # noqa: E731


@pytest.mark.parametrize("make_opt", [GROUPS, HEAD], ids=["groups", "head only"])
def test_one_process_steps_as_torch_does(make_opt):
    """Before: biases moved 0.0036 where torch moves them 0.32; the frozen body moved."""
    assert _diff(_fit(make_opt), _torch_loop(make_opt)) < 1e-6


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_groups_survive_the_ranks(strategy):
    one = _fit(GROUPS)
    assert _diff(_fit(GROUPS, strategy=strategy, devices=2, timeout=60), one) < 1e-5


def test_zero1_refuses_groups_before_starting():
    with pytest.raises(ValueError, match="own parameter groups.*'zero1'"):
        _fit(GROUPS, strategy="zero1", devices=2, timeout=60)


def test_a_saved_model_keeps_the_groups(tmp_path):
    def build():
        bigtrain.set_seed(0)
        inp = Input(shape=(6,))
        model = Model(inp, Dense(4)(Dense(8, activation="tanh")(inp)))
        model.compile(optimizer=torch.optim.AdamW(_groups(model.net)), loss="mse")
        return model
    y = RNG.normal(size=(32, 4)).astype("float32")
    model = build()
    model.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    model.save(str(tmp_path / "m.bigtrain"))
    loaded = load_model(str(tmp_path / "m.bigtrain"))
    assert [g["lr"] for g in loaded.optimizer.param_groups] == [0.01, 0.1]
    model.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    loaded.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert _diff(model.get_weights(), loaded.get_weights()) < 1e-7
