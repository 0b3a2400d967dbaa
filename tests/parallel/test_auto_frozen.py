"""strategy="auto" on a model frozen whole (no parameter requires a gradient): every
strategy refuses such a model on several processes, and the planner said "no strategy
fits 2 devices", as if the model were too big; now it says the model has nothing to train,
as the named strategies do, before any rank starts. One process still runs the frozen
model's steps and trains nothing."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.models import Model
from bigtrain.plan import plan

RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(16, 6)).astype("float32"), RNG.integers(0, 4, 16)


def frozen_model() -> Model:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    net.requires_grad_(False)
    model = Model(net)
    model.compile(optimizer="sgd", loss=F.cross_entropy)
    return model


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
def test_a_frozen_model_on_two_devices_is_refused_as_having_nothing_to_train(strategy):
    with pytest.raises(ValueError, match="no trainable weights") as err:
        frozen_model().fit(X, Y, batch_size=8, epochs=1, verbose=0, strategy=strategy,
                           devices=2, timeout=30)
    assert "no strategy fits" not in str(err.value)
    assert "fit in one process" in str(err.value)


def test_the_planner_refuses_a_frozen_model_on_several_devices_only():
    net = frozen_model().net
    with pytest.raises(ValueError, match="nothing to train on 2 devices"):
        plan(net, devices=2, batch_size=8)
    assert plan(net, devices=1, batch_size=8).estimates  # one process: its steps run
    net[0].weight.requires_grad_(True)
    assert plan(net, devices=2, batch_size=8).estimates


def test_one_process_runs_the_frozen_steps_and_trains_nothing():
    model = frozen_model()
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
