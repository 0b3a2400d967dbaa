"""Tensor parallelism's memory follows what bigtrain's tensor plan really splits.

bigtrain.parallel.tensor_plan splits a column-wise Linear's weight and bias and a row-wise
Linear's weight; everything else stays whole on every rank. Where nothing splits, tensor
parallelism saves nothing, so the planner must not offer it. Given the runtime's plan
(tensor_styles) the figures are exact; without it, layer widths bound what can split.
"""
import pytest
import torch
from torch import nn

from bigtrain.parallel.tensor_plan import tp_plan
from bigtrain.plan import plan
from tests.dist import run_ranks

ADAM_FP32 = 4 + 4 + 8  # parameter, gradient, Adam's two moments: bytes per parameter


def _seed_mlp():
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    i = Input(shape=(1000,))
    return Model(inputs=i, outputs=Dense(10, activation="softmax")(
        Dense(512, activation="relu")(i))).net


def test_nothing_splits_over_three_ranks_so_tensor_is_not_offered():
    model = _seed_mlp()  # 1000, 512 and 10 wide: none divides by 3
    for styles in (None, tp_plan(model, 3)):
        p = plan(model, devices=3, batch_size=32, tensor_styles=styles)
        assert "no layer splits over 3 ranks" in p.skipped["tensor"]
        assert all(e.strategy != "tensor" for e in p.estimates)
        assert p.best.strategy != "tensor"


def test_split_and_replicated_parameters_counted_by_hand():
    # 2 ranks: 1000 -> 512 colwise (weight and bias split), 512 -> 10 rowwise (weight split,
    # its 10-element bias whole on every rank)
    model = _seed_mlp()
    per_rank = (1000 * 512 + 512) / 2 + 512 * 10 / 2 + 10
    est = plan(model, devices=2, batch_size=32, tensor_styles=tp_plan(model, 2)).get("tensor")
    assert est.memory.model_states == ADAM_FP32 * per_rank


def test_a_linear_that_does_not_divide_stays_whole():
    # 2 ranks: 64 -> 30 colwise, 30 -> 8 rowwise (its bias whole), 8 -> 3 replicated (3 does
    # not divide by 2, and no row-wise partner follows it)
    model = nn.Sequential(nn.Linear(64, 30), nn.ReLU(), nn.Linear(30, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    per_rank = (64 * 30 + 30) / 2 + 30 * 8 / 2 + 8 + (8 * 3 + 3)
    est = plan(model, devices=2, batch_size=8, tensor_styles=tp_plan(model, 2)).get("tensor")
    assert est.memory.model_states == ADAM_FP32 * per_rank


def _three_dense():
    """64 -> 32 relu -> 16 relu -> 33 softmax: on 2 ranks the last Dense (a third of the
    parameters) stays whole, as 33 does not divide by 2."""
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    bigtrain.set_seed(0)
    i = Input(shape=(64,))
    h = Dense(16, activation="relu")(Dense(32, activation="relu")(i))
    model = Model(inputs=i, outputs=Dense(33, activation="softmax")(h))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _held_at_update(rank, world_size):
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.callbacks import Callback
    from bigtrain.engine.loop import train
    from bigtrain.engine.record import local_state_bytes
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    model = _three_dense()
    x, y = torch.randn(16, 64), torch.randint(0, 33, (16,))
    task = make_task(model, prepare_data(model, x, y), None,
                     FitConfig(epochs=1, batch_size=8, verbose=0), [])
    strategy = resolve_strategy("tensor")
    strategy.setup(DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                           local_world_size=world_size))
    held = []

    class AtUpdate(Callback):
        """Before each update: gradients and (from step 2) Adam's state all exist."""
        main_process_only = False

        def on_train_begin(self, logs=None):
            _, module = self.model._live
            model.optimizer.register_step_pre_hook(
                lambda opt, *_: held.append(sum(local_state_bytes(module, opt))))

    task.callbacks = [AtUpdate()]
    train(task, strategy, model)
    strategy.teardown()
    return max(held)


@pytest.mark.slow
def test_tensor_states_match_what_two_ranks_hold():
    results = run_ranks(_held_at_update, 2, timeout=60)
    measured = max(results)  # the heavier rank's local parameters, gradients, Adam state
    net = _three_dense().net
    est = plan(net, devices=2, batch_size=8, tensor_styles=tp_plan(net, 2)).get("tensor")
    predicted = est.memory.model_states
    assert abs(predicted - measured) / measured < 0.02, (predicted, measured)
