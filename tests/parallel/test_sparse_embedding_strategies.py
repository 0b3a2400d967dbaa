"""nn.Embedding(sparse=True) on several processes: ddp trains it as one process does; the
strategies that handle gradients as dense tensors (zero1, zero2/zero3/fsdp_offload,
ddp_cpu_optimizer, ddp_balanced) are refused before any rank starts, naming the layer, the
strategy and the fix, and strategy="auto" does not pick them."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.launch import runner
from bigtrain.models import Model
from bigtrain.parallel.base import resolve_strategy

REFUSED = ("zero1", "zero2", "zero3", "fsdp", "fsdp_offload", "ddp_cpu_optimizer",
           "ddp_balanced")


class Bag(nn.Module):
    def __init__(self, sparse: bool = True):
        super().__init__()
        self.emb = nn.Embedding(13, 6, sparse=sparse)
        self.out = nn.Linear(6, 3)

    def forward(self, ids):  # (B, 5) token ids -> (B, 3) logits
        return self.out(self.emb(ids).mean(1))


def fit_bag(optimizer="sgd", **where) -> dict:
    torch.manual_seed(0)
    model = Model(Bag())
    model.compile(optimizer=optimizer, loss=F.cross_entropy)
    r = np.random.default_rng(1)
    x, y = r.integers(0, 9, (32, 5)), r.integers(0, 3, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, **where)
    return model.net.state_dict()


def no_launch(*a, **k):
    raise AssertionError("launched before refusing")


@pytest.mark.parametrize("name, label", [("zero1", "zero1"), ("zero2", "zero2"),
                                         ("fsdp_offload", "zero3 + cpu offload"),
                                         ("ddp_cpu_optimizer", "ddp_cpu_optimizer"),
                                         ("ddp_balanced", "ddp_balanced")])
def test_refused_before_any_rank_starts(monkeypatch, name, label):
    monkeypatch.setattr("bigtrain.launch.launcher.launch", no_launch)
    with pytest.raises(ValueError) as refused:
        fit_bag(strategy=name, devices=2)
    why = str(refused.value)
    assert "nn.Embedding 'emb' has sparse=True" in why and f"strategy {label!r}" in why
    assert "sparse=False" in why and "strategy='ddp'" in why


def test_refused_in_a_launched_job_before_joining_it(monkeypatch):
    monkeypatch.setattr(runner.dist_env, "launched_externally", lambda: True)
    monkeypatch.setattr(runner.dist_env, "join_existing_job", no_launch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    task = type("Task", (), {"module": Bag(), "callbacks": [],
                             "make_optimizer": lambda params: torch.optim.SGD(params, lr=0.1)})
    with pytest.raises(ValueError, match="strategy 'zero1'"):
        runner.run_task(task, resolve_strategy("zero1"), None, None, {})


def test_auto_leaves_out_the_refused_strategies_only():
    refused = runner.model_refusals(Bag(), 2)
    assert all("sparse=True" in refused[name] for name in REFUSED)
    for name in ("ddp", "ps", "tensor", "pipeline"):
        assert "sparse=True" not in refused.get(name, ""), name
    assert not any("sparse" in why for why in runner.model_refusals(Bag(False), 2).values())
    assert runner.model_refusals(Bag(), 1) == {}


def test_ddp_on_two_ranks_trains_it_as_one_process():
    ref = fit_bag()
    got = fit_bag(strategy="ddp", devices=2)
    for key, want in ref.items():
        assert torch.allclose(got[key], want, atol=1e-5, rtol=0), key
    torch.manual_seed(0)
    assert not torch.equal(ref["emb.weight"], Bag().emb.weight)  # it trained
