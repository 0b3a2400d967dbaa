"""Lamb (a trust ratio from each variable's whole norm) on parameter servers that split a
variable by rows over servers=2: fit refuses it before any process starts, naming the
variable and the fix. Before, fit launched the ranks and every rank raised in its
optimizer setup, after the process group existed."""
import numpy as np
import pytest

import bigtrain
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.parallel import ParameterServer


def _model(optimizer: str) -> Model:
    bigtrain.clear_session()
    inp = Input(shape=(64,))
    model = Model(inp, Dense(2)(Dense(64, activation="relu")(inp)))  # a 64x64 kernel to split
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _no_launch(*args, **kwargs):
    raise AssertionError("fit started the ranks before refusing the optimizer")


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 64)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")


def test_lamb_over_rows_split_by_two_servers_is_refused_before_launch(monkeypatch):
    monkeypatch.setattr("bigtrain.launch.launcher.launch", _no_launch)
    x, y = _data()
    with pytest.raises(ValueError, match=r"servers=2\) splits \[.*weight.*Lamb.*servers=1"):
        _model("lamb").fit(x, y, batch_size=8, devices=3, verbose=0,
                           strategy=ParameterServer(servers=2, mode="asp"))


@pytest.mark.parametrize("optimizer,servers", [("adam", 2), ("lamb", 1)])
def test_rules_the_split_keeps_reach_the_launch(monkeypatch, optimizer, servers):
    monkeypatch.setattr("bigtrain.launch.launcher.launch", _no_launch)
    x, y = _data()
    with pytest.raises(AssertionError, match="started the ranks"):
        _model(optimizer).fit(x, y, batch_size=8, devices=servers + 2, verbose=0,
                              strategy=ParameterServer(servers=servers))
