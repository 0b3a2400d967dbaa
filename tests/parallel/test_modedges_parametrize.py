"""Modules parametrized with torch.nn.utils.parametrizations (weight_norm, spectral_norm):
torch refuses to pickle them, so the launcher sends each as its class, its state and the
names of its parametrized tensors, and every rank parametrizes it again."""
import io

import cloudpickle
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations as P

import bigtrain
from bigtrain.launch import runner
from bigtrain.launch.launcher import _Pickler
from bigtrain.models import Model


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = P.weight_norm(nn.Linear(6, 8))
        self.b = P.spectral_norm(nn.Linear(8, 3))  # power-iteration buffers _u, _v

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _roundtrip(obj):
    buf = io.BytesIO()
    _Pickler(buf).dump(obj)
    return cloudpickle.loads(buf.getvalue())


def test_a_parametrized_module_is_rebuilt_with_its_own_originals():
    torch.manual_seed(0)
    model = Normed()
    with torch.no_grad():  # originals that right_inverse would not give back
        model.a.parametrizations.weight.original1.mul_(3.0)
    shared = [model, model.a]
    copy, copy_a = _roundtrip(shared)
    assert copy_a is copy.a and type(copy.a) is not type(model.a)
    assert isinstance(copy.a, nn.Linear) and "weight" in copy.a.parametrizations
    ref, got = model.state_dict(), copy.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    x = torch.randn(4, 6)
    model.eval(), copy.eval()
    assert torch.equal(model(x), copy(x))
    copy.train()
    copy(x).sum().backward()  # gradients reach the originals, not a plain weight
    assert copy.a.parametrizations.weight.original1.grad is not None


def _fit(**kw):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    torch.manual_seed(0)
    model = Model(Normed())
    model.compile(optimizer="sgd", loss=F.cross_entropy)
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, **kw)
    return {k: v.detach().double() for k, v in model.net.state_dict().items()}


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_weight_norm_and_spectral_norm_train_as_one_process(strategy):
    one = _fit()
    two = _fit(strategy=strategy, devices=2, timeout=60, watchdog_timeout=30)
    assert one.keys() == two.keys()
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-6


def test_ray_refuses_parametrized_modules_before_starting_workers():
    with pytest.raises(ValueError, match=r"cluster='ray'.*'a'.*devices=N"):
        runner.check_ray_payload(Normed())
    runner.check_ray_payload(nn.Linear(2, 2))  # nothing parametrized: no refusal
