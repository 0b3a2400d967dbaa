"""Keras's optimizer arguments (global_clipnorm, clipnorm, weight decay, EMA) and fit
arguments (class_weight, steps_per_epoch, validation_freq) give one process's weights under
every strategy that takes them: the gradient norms are summed over shards, so clipping is
the same whether the gradients are replicated (ddp, zero1, host optimizer), sharded (zero2,
zero3, fsdp_offload) or split by tensor parallelism."""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain import optimizers as bo
from bigtrain.api.training import make_task, prepare_data
from bigtrain.engine.task import FitConfig
from bigtrain.layers import Dense, Input
from bigtrain.models import Model
from tests.dist import run_ranks
from tests.parallel.strategy_cases import max_param_diff

TOL = 1e-5
STRATEGIES = ["ddp", "zero1", "zero2", "zero3", "fsdp_offload", "ddp_cpu_optimizer", "tensor"]
# global_clipnorm far below the gradient norm (about 1), so every step is clipped
OPTIMIZERS = {
    "global_clipnorm": lambda: bo.SGD(0.5, global_clipnorm=0.05),
    "clipnorm": lambda: bo.SGD(0.5, clipnorm=0.02),
    "decay_ema": lambda: bo.SGD(0.2, momentum=0.9, weight_decay=0.1, use_ema=True,
                                ema_momentum=0.5),
    "clipvalue_decay": lambda: bo.SGD(0.5, clipvalue=0.01, weight_decay=0.1),
    "plain": lambda: bo.SGD(0.5),
}
# pipeline stages step their own layers: per-variable rules only (global_clipnorm is refused)
PER_STRATEGY = {**{name: ("global_clipnorm", "clipnorm", "decay_ema") for name in STRATEGIES},
                "pipeline": ("clipnorm", "decay_ema")}


def _unfused(spec):
    """The per-tensor kernel: fused SGD has no DTensor rule (the kernel choice for sharded
    parameters is a separate matter, tested with the strategy matrix)."""
    spec.kwargs["fused"] = False
    return spec


def _data(n=48):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 24)).astype(np.float32)
    return x, rng.integers(0, 6, n)


def _model():
    inp = Input(shape=(24,))
    return Model(inp, Dense(6, activation="softmax")(Dense(16, activation="relu")(inp)))


def _task(optimizer: str):
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = _model()
    model.compile(optimizer=_unfused(OPTIMIZERS[optimizer]()),
                  loss="sparse_categorical_crossentropy")
    x, y = _data()
    weights = np.where(y == 0, 4.0, 1.0).astype(np.float32)  # class_weight {0: 4}
    cfg = FitConfig(epochs=2, batch_size=8, verbose=0, seed=0, steps_per_epoch=4)
    return model, make_task(model, prepare_data(model, x, y, weights), None, cfg, [])


def _reference(optimizer: str) -> dict:
    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import Strategy
    model, task = _task(optimizer)
    return train(task, Strategy(), model).state_dict


def _every_strategy(rank, world_size):
    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    out = {}
    for name, optimizers in PER_STRATEGY.items():
        for optimizer in optimizers:
            model, task = _task(optimizer)
            env = DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                          local_world_size=world_size, device=torch.device("cpu"))
            out[name, optimizer] = run_rank(task, resolve_strategy(name), model, env).state_dict
    return out if rank == 0 else None


@pytest.mark.slow
def test_optimizer_arguments_match_one_process_under_every_strategy():
    refs = {o: _reference(o) for o in OPTIMIZERS}
    got = run_ranks(_every_strategy, 2, timeout=400)[0]
    diffs = {key: max_param_diff(refs[key[1]], state) for key, state in got.items()}
    bad = {key: d for key, d in diffs.items() if d > TOL}
    assert not bad, bad
    for optimizer in OPTIMIZERS:  # each argument acts
        assert optimizer == "plain" or max_param_diff(refs[optimizer], refs["plain"]) > 100 * TOL


@pytest.mark.slow
def test_parameter_server_applies_elementwise_rules():
    """clipvalue and weight decay act element by element, so the servers' row shards apply
    them exactly (clipnorm, global_clipnorm and use_ema are refused before any rank starts)."""
    x, y = _data()
    states = {}
    for strategy, devices in ((None, None), ("ps", 3)):
        bigtrain.clear_session()
        bigtrain.set_seed(0)
        model = _model()
        model.compile(optimizer=OPTIMIZERS["clipvalue_decay"](),
                      loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, strategy=strategy, devices=devices)
        states[strategy] = model.net.state_dict()
    assert max_param_diff(states[None], states["ps"]) <= TOL


@pytest.mark.slow
def test_keras_fit_arguments_under_ddp_equal_one_process():
    x, y = _data()
    kw = dict(batch_size=8, epochs=3, steps_per_epoch=4, class_weight={0: 4.0, 1: 0.5},
              validation_data=(x[:16], y[:16]), validation_freq=[1, 3], verbose=0)
    runs = {}
    for strategy, devices in ((None, None), ("ddp", 2)):
        bigtrain.clear_session()
        bigtrain.set_seed(0)
        model = _model()
        model.compile(optimizer=bo.SGD(0.5, global_clipnorm=0.05),
                      loss="sparse_categorical_crossentropy")
        hist = model.fit(x, y, strategy=strategy, devices=devices, **kw)
        runs[strategy] = (model.net.state_dict(), hist.history)
    assert max_param_diff(runs[None][0], runs["ddp"][0]) <= TOL
    assert len(runs["ddp"][1]["val_loss"]) == 2
    np.testing.assert_allclose(runs["ddp"][1]["val_loss"], runs[None][1]["val_loss"],
                               atol=1e-5)
