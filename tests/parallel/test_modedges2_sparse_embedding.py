"""nn.Embedding(sparse=True) under every optimizer compile knows by name: plain SGD keeps the
gradient sparse (off torch's fused kernel, which refuses it) and steps exactly as torch's own
SGD; every other rule trains exactly as with sparse=False (the gradient made dense)."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.api.optimizers import _OPTIMIZERS
from bigtrain.models import Model

BATCH = 8


class Bag(nn.Module):
    def __init__(self, sparse: bool):
        super().__init__()
        self.emb = nn.Embedding(13, 6, sparse=sparse)
        self.out = nn.Linear(6, 3)

    def forward(self, ids):  # (B, 5) token ids -> (B, 3) logits
        return self.out(self.emb(ids).mean(1))


def data():
    r = np.random.default_rng(1)
    return r.integers(0, 9, (32, 5)), r.integers(0, 3, 32)  # rows 9-12 never looked up


def fit_bag(sparse: bool, optimizer) -> nn.Module:
    torch.manual_seed(0)
    model = Model(Bag(sparse))
    model.compile(optimizer=optimizer, loss=F.cross_entropy)
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=2, batch_size=BATCH, shuffle=False, verbose=0)
    return model.net


def test_sgd_steps_sparse_gradients_as_torchs_own_sgd():
    torch.manual_seed(0)
    net = Bag(sparse=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)  # Keras's "sgd": lr 0.01, no momentum
    x, y = (torch.from_numpy(a) for a in data())
    for _ in range(2):
        for i in range(0, 32, BATCH):
            opt.zero_grad()
            F.cross_entropy(net(x[i:i + BATCH]), y[i:i + BATCH]).backward()
            opt.step()
    got = fit_bag(True, "sgd")
    for key, ref in net.state_dict().items():
        assert torch.allclose(got.state_dict()[key], ref, atol=1e-6, rtol=0), key
    torch.manual_seed(0)
    start = Bag(sparse=True)  # the weights before training
    assert not torch.equal(got.emb.weight[:9], start.emb.weight[:9])  # it trained
    assert torch.equal(got.emb.weight[9:], start.emb.weight[9:])  # rows never looked up


@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_every_keras_name_trains_a_sparse_embedding_as_a_dense_one(name):
    sparse, dense = fit_bag(True, name), fit_bag(False, name)
    # SGD's sparse step adds a row's repeated look-ups in another order: float32 rounding
    tol = 5e-6 if name == "sgd" else 0.0
    for key, ref in dense.state_dict().items():
        assert torch.allclose(sparse.state_dict()[key], ref, atol=tol, rtol=0), (name, key)


def test_densifying_rules_say_so_once():
    torch.manual_seed(0)
    model = Model(Bag(sparse=True))
    model.compile(optimizer="adam", loss=F.cross_entropy)
    x, y = data()
    with pytest.warns(UserWarning, match="made dense for Adam") as record:
        model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
    assert sum("made dense" in str(w.message) for w in record) == 1
