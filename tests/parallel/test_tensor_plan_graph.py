"""Tensor parallelism on functional graphs: a column-split Dense pairs with a row-split one
only when that one alone reads its output (bigtrain.parallel.tensor_flow), so a Dense that
feeds two heads or a skip connection trains as in one process."""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.layers import Add, Dense, Input
from bigtrain.models import Model, Sequential
from bigtrain.optimizers import SGD
from bigtrain.parallel.tensor_plan import planned_styles, tp_plan


def _two_heads() -> Model:
    """(5,) -> Dense(8) relu -> [Dense(1), Dense(3)]: `h` feeds both heads."""
    inp = Input((5,))
    h = Dense(8, activation="relu", name="h")(inp)
    return Model(inp, [Dense(1, name="p")(h), Dense(3, name="c")(h)])


def _skip() -> Model:
    """(5,) -> Dense(8) relu -> Dense(8), added back to its input -> Dense(2)."""
    inp = Input((5,))
    h = Dense(8, activation="relu", name="h")(inp)
    return Model(inp, Dense(2, name="o")(Add()([h, Dense(8, name="p")(h)])))


def _shared_pair() -> Model:
    """One Dense pair called on two inputs: each call of `d` feeds only a call of `e`."""
    a, b = Input((5,)), Input((5,))
    d, e = Dense(8, activation="relu", name="d"), Dense(4, name="e")
    return Model([a, b], Add()([e(d(a)), e(d(b))]))


def test_a_column_split_output_goes_to_its_sole_reader_only():
    for make in (_two_heads, _skip):
        plan = tp_plan(make(), 2)
        assert plan["net.layers.h.linear"] == "colwise_gather", make.__name__
        assert plan["net.layers.p.linear"] != "rowwise", make.__name__
        assert planned_styles(make(), 2) == plan  # the planner counts what the runtime splits
    assert set(tp_plan(_shared_pair(), 2).values()) == {"colwise", "rowwise"}
    chain = Sequential([Input((5,)), Dense(8, activation="relu"), Dense(4)])
    assert list(tp_plan(chain, 2).values()) == ["colwise", "rowwise"]


def _data(model: Model, rng):
    x = rng.normal(size=(16, 5)).astype("float32")
    widths = [t.shape[-1] for t in model.net.output_tensors]
    y = [rng.normal(size=(16, w)).astype("float32") for w in widths]
    return x, (y if len(y) > 1 else y[0]), len(y)


@pytest.mark.parametrize("make", [_two_heads, _skip])
def test_fit_on_two_tensor_ranks_matches_one_process(make):
    bigtrain.clear_session()
    torch.manual_seed(0)
    model = make()
    x, y, heads = _data(model, np.random.default_rng(0))
    start, states = model.get_weights(), []
    for kwargs in ({}, {"strategy": "tensor", "devices": 2, "timeout": 60}):
        model.set_weights(start)
        model.compile(optimizer=SGD(learning_rate=0.1), loss=["mse"] * heads)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, **kwargs)
        states.append(model.get_weights())
    moved = max(np.abs(a - b).max() for a, b in zip(states[0], start))
    assert moved > 1e-2  # the guard: four steps move the weights far beyond the tolerance
    assert max(np.abs(a - b).max() for a, b in zip(*states)) <= 1e-5
