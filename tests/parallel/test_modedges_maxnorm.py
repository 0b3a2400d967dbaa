"""nn.Embedding(max_norm=...) rescales the rows it looks up, in place, inside forward. A
data-parallel rank sees only its share of the batch (the ranks drift apart) and a sharded,
host-held or server-held weight loses the write, so fit refuses those strategies before any
process starts; tensor parallelism (every rank sees the whole batch) trains it exactly."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain.launch import launcher, runner
from bigtrain.models import Model
from bigtrain.parallel import Hybrid


class Renorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(13, 6, max_norm=1.0)
        self.out = nn.Linear(6, 3)

    def forward(self, ids):
        return self.out(self.emb(ids).mean(1))


def _data():
    rng = np.random.default_rng(1)
    return rng.integers(0, 11, (32, 5)), rng.integers(0, 3, 32)


def _model():
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    torch.manual_seed(0)
    model = Model(Renorm())
    model.compile(optimizer="sgd", loss=F.cross_entropy)
    return model


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero3", "ddp_cpu_optimizer", "ps"])
def test_max_norm_is_refused_before_any_process_starts(strategy, monkeypatch):
    def no_launch(*args, **kwargs):
        raise AssertionError("ranks started")
    monkeypatch.setattr(launcher, "launch", no_launch)
    x, y = _data()
    with pytest.raises(ValueError, match=r"nn.Embedding 'emb' has max_norm=1.0.*'tensor'"):
        _model().fit(x, y, batch_size=8, verbose=0, strategy=strategy, devices=2)


def test_strategies_that_see_the_whole_batch_are_not_refused():
    module = Renorm()
    refused = runner.model_refusals(module, 2)
    assert "max_norm" in refused["ddp"] and "max_norm" in refused["zero3"]
    assert "tensor" not in refused and "single" not in refused
    assert runner.renorm_refusal(module, Hybrid(dp=2, tp=2), 4) is not None
    assert runner.renorm_refusal(module, Hybrid(dp=1, tp=2, pp=2), 4) is None


def test_tensor_parallel_renormalises_exactly():
    x, y = _data()
    one, two = _model(), _model()
    start = two.net.emb.weight.detach().clone()
    one.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    two.fit(x, y, batch_size=8, shuffle=False, verbose=0, strategy="tensor", devices=2,
            timeout=60, watchdog_timeout=30)
    a, b = one.net.emb.weight.detach(), two.net.emb.weight.detach()
    # the rows looked up were rescaled to norm 1 (then moved by the last update)
    assert float(start[:11].norm(dim=1).max()) > 1.5 > 1.01 > float(b[:11].norm(dim=1).max())
    assert torch.allclose(a, b, atol=1e-6)
