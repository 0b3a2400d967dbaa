"""A parameter that got no gradient (an unused head, a layer no step ran) has no optimizer
state, as in one process until its first gradient. That broke continuing a run:

- a second fit on several processes loads the first one's optimizer state on the ranks,
  which stopped inside torch ("Missing optimizer state for parameter 'spare.weight' in
  checkpoint");
- resuming from fit(checkpoint_dir=...), in one process too, said the checkpoint "does not
  fit this model/optimizer (from another model?)" and named the parameter's state.
"""
import tempfile

import numpy as np
import pytest
import torch
from torch import nn

import bigtrain
from bigtrain.losses import SparseCategoricalCrossentropy
from bigtrain.models import Model
from bigtrain.parallel import DataParallel

RNG = np.random.default_rng(0)
X = RNG.standard_normal((32, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 32)


class WithSpare(nn.Module):
    """`spare` is never called: it never gets a gradient, hence no optimizer state."""

    def __init__(self):
        super().__init__()
        self.fc, self.out, self.spare = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def _model() -> Model:
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = Model(WithSpare())
    model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True))
    return model


def _twice(**kw) -> dict:
    model = _model()
    for _ in range(2):
        model.fit(X, Y, epochs=1, batch_size=8, shuffle=False, verbose=0, **kw)
    return model.net.state_dict()


@pytest.mark.parametrize("strategy", ["zero3", DataParallel(find_unused_parameters=True)],
                         ids=["zero3", "ddp_find_unused"])
def test_a_second_fit_carries_the_state_of_a_model_with_an_unused_parameter(strategy):
    one = _twice()
    two = _twice(strategy=strategy, devices=2, watchdog_timeout=30)
    diffs = {k: float((one[k] - two[k]).abs().max()) for k in one}
    assert max(diffs.values()) < 1e-5, diffs


def _resumed(**kw) -> dict:
    """Epoch 1 saved to a checkpoint, then a new model resumes it for epoch 2."""
    with tempfile.TemporaryDirectory() as ckpt:
        for epochs in (1, 2):
            model = _model()
            model.fit(X, Y, epochs=epochs, batch_size=8, shuffle=False, verbose=0,
                      checkpoint_dir=ckpt, **kw)
    return model.net.state_dict()


@pytest.mark.parametrize("kw", [{}, dict(strategy="zero3", devices=2, watchdog_timeout=30)],
                         ids=["one_process", "zero3"])
def test_resuming_a_model_with_an_unused_parameter_continues_the_run(kw):
    model = _model()
    model.fit(X, Y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    whole = model.net.state_dict()
    got = _resumed(**kw)
    diffs = {k: float((whole[k] - got[k]).abs().max()) for k in whole}
    assert max(diffs.values()) < 1e-5, diffs
