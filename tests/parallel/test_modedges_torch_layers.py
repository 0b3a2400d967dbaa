"""torch's own layers that read a sub-module's weights in their forward: MultiheadAttention
applies `self.out_proj.weight` itself, TransformerEncoderLayer's inference fast path hands
every child's weights to one kernel, TransformerEncoder checks its first layer's weights
through a local name. Under zero2/zero3 such a child must not be an FSDP unit of its own
(its weight would be a shard there: "mixed torch.Tensor and DTensor")."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigtrain
from bigtrain.models import Model
from bigtrain.parallel.param_reads import outside_uses
from bigtrain.parallel.sharded import shard_units


class Attn(nn.Module):
    """Token ids -> embedding -> MultiheadAttention -> TransformerEncoderLayer -> 3 classes."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.emb(ids)  # (B, T, 8)
        a, _ = self.att(h, h, h, need_weights=False)
        return self.head(self.enc(h + a).mean(1))


class FirstBlock(nn.Module):
    """Reads a block's weight through a local bound to `self.blocks[0]`."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, x):
        first = self.blocks[0]
        return self.blocks[1](first(x)) + first.bias


def _unit_names(model):
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in shard_units(model)]


def test_torch_layers_that_read_child_weights_are_whole_units():
    units = _unit_names(Attn())
    assert "att" in units and "att.out_proj" not in units
    assert "enc" in units and not any(u.startswith("enc.") for u in units)
    stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)
    owners = {u.owner for u in outside_uses(stack) if u.user == ""}
    assert "layers.0.linear1" in owners and "layers.0.self_attn" in owners
    assert {(u.user, u.owner) for u in outside_uses(FirstBlock())} == {("", "blocks.0")}


def _fit(**kw):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (24, 5)), rng.integers(0, 3, 24)
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    torch.manual_seed(0)
    model = Model(Attn())
    model.compile(optimizer="sgd", loss=F.cross_entropy)
    # validation runs the layers in inference mode: TransformerEncoderLayer's fast path
    history = model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
                        validation_data=(x, y), **kw)
    state = {k: v.detach().double() for k, v in model.net.state_dict().items()}
    return state, history.history["val_loss"]


@pytest.mark.parametrize("strategy", ["zero3", "zero2"])
def test_attention_and_encoder_layer_train_and_validate_as_one_process(strategy):
    one, val_one = _fit()
    two, val_two = _fit(strategy=strategy, devices=2, timeout=60, watchdog_timeout=30)
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    assert np.allclose(val_one, val_two, rtol=1e-5, atol=1e-6)
