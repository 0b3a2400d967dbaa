"""A torch module whose forward returns a dict (as Hugging Face models do): fit stops at the
first batch with the dict's keys and the fix (a loss dict by key, or a tensor), before
any update, instead of failing inside the loss with a torch error."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.models import Model


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 1)

    def forward(self, x):  # (B, 6) -> {"logits": (B, 3), "aux": (B, 1)}
        h = torch.relu(self.a(x))
        return {"logits": self.b(h), "aux": self.c(h)}


def data():
    r = np.random.default_rng(0)
    return r.normal(size=(32, 6)).astype("float32"), r.integers(0, 3, 32)


def compiled() -> Model:
    torch.manual_seed(0)
    model = Model(DictOut())
    model.compile(optimizer="sgd", loss=lambda t, o: F.cross_entropy(o["logits"], t.long()))
    return model


def test_fit_names_the_dict_keys_and_the_fix_before_any_step():
    model = compiled()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    x, y = data()
    with pytest.raises(TypeError, match=r"returned a dict with keys \['logits', 'aux'\]") as err:
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert "compile with loss={'logits': ..., 'aux': ...}" in str(err.value)
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_train_on_batch_says_the_same():
    model = compiled()
    x, y = data()
    with pytest.raises(TypeError, match="returned a dict with keys"):
        model.train_on_batch(x[:8], y[:8])


class Logits(nn.Module):
    """The fix the message names: the same module, its "logits" returned as a tensor."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)["logits"]


def test_the_named_fix_trains_as_a_torch_loop():
    torch.manual_seed(0)
    ref = DictOut()
    opt = torch.optim.SGD(ref.parameters(), lr=0.01)
    x, y = (torch.from_numpy(a) for a in data())
    for i in range(0, 32, 8):
        opt.zero_grad()
        F.cross_entropy(ref(x[i:i + 8])["logits"], y[i:i + 8]).backward()
        opt.step()
    torch.manual_seed(0)
    model = Model(Logits(DictOut()))
    model.compile(optimizer="sgd", loss=F.cross_entropy)
    model.fit(*data(), epochs=1, batch_size=8, shuffle=False, verbose=0)
    for key, value in ref.state_dict().items():
        assert torch.allclose(model.net.net.state_dict()[key], value, atol=1e-6), key
