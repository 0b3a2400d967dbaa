"""A model and optimizers for the sharded-parameter parity tests (built identically in every
rank): an MLP with odd widths and a softmax hidden layer, so tensor parallelism must gather
before the softmax and leave the 3-class head replicated (DTensors mixed with plain tensors),
and FSDP shards rows unevenly."""
from __future__ import annotations

import numpy as np
import torch

import bigtrain
from bigtrain.api.training import make_task, prepare_data
from bigtrain.engine.task import FitConfig
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from bigtrain.optimizers import SGD, Adadelta

STEPS, BATCH, TOL = 5, 8, 1e-5

#: every built-in optimizer; plain SGD at a large rate so a wrong gradient scale shows
OPTIMIZERS = {"sgd": lambda: SGD(learning_rate=0.5), "sgd_momentum":
              lambda: SGD(learning_rate=0.1, momentum=0.9), "adam": lambda: "adam",
              "adamw": lambda: "adamw", "rmsprop": lambda: "rmsprop",
              # Adadelta's steps at Keras's rate 1e-3 are ~1e-7: too small for the guard
              "adagrad": lambda: "adagrad", "adadelta": lambda: Adadelta(learning_rate=1.0),
              "adamax": lambda: "adamax", "nadam": lambda: "nadam"}


def softmax_mlp(activation="softmax") -> Model:
    """7 -> 6 (softmax) -> 10 relu -> 9 tanh -> 3 softmax."""
    inp = Input(shape=(7,))
    h = Dense(6, activation=activation)(inp)
    h = Dense(9, activation="tanh")(Dense(10, activation="relu")(h))
    return Model(inp, Dense(3, activation="softmax")(h))


def case_data(n: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 7)).astype(np.float32) * 3
    return x, np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]


def build(optimizer: str, steps: int = STEPS):
    """(model, task): `steps` optimizer steps of one epoch with the named optimizer."""
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = softmax_mlp()
    model.compile(optimizer=OPTIMIZERS[optimizer](), loss="categorical_crossentropy")
    x, y = case_data(steps * BATCH)
    cfg = FitConfig(epochs=1, batch_size=BATCH, verbose=0, seed=0)
    return model, make_task(model, prepare_data(model, x, y), None, cfg, [])


def reference(optimizer: str, steps: int = STEPS) -> dict:
    """Single-process training: the final state dict."""
    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import Strategy
    model, task = build(optimizer, steps)
    return train(task, Strategy(), model).state_dict


def run_all(rank, world, strategies) -> dict:
    """Inside a rank of tests.dist.run_ranks: {(strategy, optimizer): rank 0's state}."""
    import torch.distributed as dist

    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel.base import DistEnv
    env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                  local_rank=dist.get_rank(), local_world_size=dist.get_world_size(),
                  device=torch.device("cpu"))
    out = {}
    for label, make_strategy in strategies:
        for name in OPTIMIZERS:
            model, task = build(name)
            state = run_rank(task, make_strategy(), model, env).state_dict
            out[(label, name)] = ({k: v.numpy() for k, v in state.items()} if state else None)
    return out


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max())
               for k in a)


def check_parity(results: dict, strategies) -> None:
    """Every (strategy, optimizer) cell within TOL of one process, and one step apart is
    more than 100 x TOL away (so the check can tell)."""
    for name in OPTIMIZERS:
        ref = reference(name)
        one_less = reference(name, STEPS - 1)
        assert max_diff(ref, one_less) > 100 * TOL, name
        for label, _ in strategies:
            diff = max_diff(results[(label, name)], ref)
            assert diff <= TOL, f"{label} with {name}: max |diff| {diff:.2e} > {TOL}"
