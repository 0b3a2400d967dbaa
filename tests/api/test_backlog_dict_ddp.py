"""A torch module whose forward returns a dict, compiled with a loss for some of its keys,
trains under strategy="ddp" on two ranks as in one process: the layer that feeds only the
key without a loss gets no gradient, which DDP refuses unless it looks for unused
parameters, and fit tells it to where a forward of the first row shows such parameters."""
import numpy as np
import pytest
import torch

from bigtrain.api.keyed_outputs import ddp_strategy
from bigtrain.api.inputs import prepare_data
from bigtrain.models import Model
from bigtrain.parallel import DataParallel
from tests.api.dict_module import DictOut

RNG = np.random.default_rng(2)
X = RNG.normal(size=(24, 4)).astype("float32")
YA = RNG.normal(size=(24, 2)).astype("float32")
YB = RNG.integers(0, 3, 24)
FIT = dict(epochs=2, batch_size=8, shuffle=False, verbose=0)


def _compiled(loss=None) -> Model:
    torch.manual_seed(0)
    model = Model(DictOut())
    model.compile(optimizer="sgd", learning_rate=0.1,
                  loss=loss or {"a": "mse", "b": "sparse_categorical_crossentropy"})
    return model


@pytest.mark.parametrize("strategy", ["ddp", "zero1"])
def test_a_key_without_a_loss_trains_on_two_ranks_as_one_process(strategy):
    one = _compiled()
    want = one.fit(X, {"a": YA, "b": YB}, **FIT).history
    two = _compiled()
    got = two.fit(X, {"a": YA, "b": YB}, strategy=strategy, devices=2, timeout=60,
                  **FIT).history
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)
    for key, value in one.net.state_dict().items():
        np.testing.assert_allclose(two.net.state_dict()[key], value, atol=1e-6, err_msg=key)
    # the layer of "c" trained nowhere: one process leaves it as it was, so must the ranks
    np.testing.assert_array_equal(two.net.c.weight.detach(), _compiled().net.c.weight.detach())


def test_ddp_looks_for_unused_parameters_only_where_some_are():
    model = _compiled()
    data = prepare_data(model, X, {"a": YA, "b": YB})
    given = DataParallel()
    changed = ddp_strategy(model, given, data, processes=2)
    assert changed is not given and changed.find_unused_parameters
    assert not given.find_unused_parameters  # the user's object is left as it was
    assert ddp_strategy(model, "ddp", data, processes=2).find_unused_parameters
    assert ddp_strategy(model, "ddp", data, processes=1) == "ddp"  # no DDP in one process
    assert ddp_strategy(model, "zero2", data, processes=2) == "zero2"  # no DDP there
    every = _compiled({"a": "mse", "b": "sparse_categorical_crossentropy", "c": "mse"})
    data = prepare_data(every, X, {"a": YA, "b": YB, "c": YA[:, :1]})
    assert ddp_strategy(every, "ddp", data, processes=2) == "ddp"  # every layer has a loss
    assert every.net.training and not every.compiled.keyed.engine_view  # the probe undid
