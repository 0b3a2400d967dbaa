"""Shared models and data for strategy parity tests (built identically in every rank)."""
from __future__ import annotations

import numpy as np
import torch

import bigtrain
from bigtrain.api.training import make_task, prepare_data
from bigtrain.engine.task import FitConfig
from bigtrain.layers import Dense, Embedding, Flatten, Input, LayerNormalization
from bigtrain.models import Model


def seed_model(width=1000, hidden=64, classes=10):
    inp = Input(shape=(width,))
    out = Dense(classes, activation="softmax")(Dense(hidden, activation="relu")(inp))
    return Model(inp, out)


def embed_model(vocab=50, seq=8, classes=4):
    inp = Input(shape=(seq,), dtype="int64")
    h = Flatten()(LayerNormalization()(Embedding(vocab, 16)(inp)))
    return Model(inp, Dense(classes, activation="softmax")(h))


def case_data(kind: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "seed":
        x = rng.random((n, 1000), dtype=np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    else:
        x = rng.integers(0, 50, (n, 8))
        y = np.eye(4, dtype=np.float32)[x.sum(1) % 4]
    return x, y


def build(kind: str, steps: int = 5, batch: int = 40, accumulate: int = 1, seed: int = 0):
    """(model, task) for `steps` optimizer steps of one epoch, no shuffling surprises."""
    bigtrain.clear_session()
    bigtrain.set_seed(seed)
    model = seed_model() if kind == "seed" else embed_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  learning_rate=1e-3)
    x, y = case_data(kind, steps * batch, seed)
    data = prepare_data(model, x, y)
    cfg = FitConfig(epochs=1, batch_size=batch, verbose=0, accumulate_steps=accumulate, seed=seed)
    return model, make_task(model, data, None, cfg, [])


def max_param_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), (sorted(a), sorted(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def reference_state(kind: str, **kw) -> dict:
    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import Strategy
    model, task = build(kind, **kw)
    strategy = Strategy()
    return train(task, strategy, model).state_dict


def run_strategy(kind: str, strategy_name: str, **kw) -> dict | None:
    """Inside a rank of tests.dist.run_ranks: train with the strategy, rank 0's full state."""
    import torch.distributed as dist

    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    model, task = build(kind, **kw)
    env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                  local_rank=dist.get_rank(), local_world_size=dist.get_world_size(),
                  device=torch.device("cpu"))
    return run_rank(task, resolve_strategy(strategy_name), model, env).state_dict


def token_mlp(steps: int, batch: int):
    """A per-position MLP over (64, 16) inputs (64 x (16x256 + 256x256) MACs per sample, 0.2 M
    parameters): compute per sample far above the fixed per-step cost (launches, gradient
    buffers), so seconds per sample reflect the slow knob and not the overhead."""
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(64, 16))
    h = Dense(256, activation="relu")(Dense(256, activation="relu")(inp))
    model = Model(inp, Dense(10, activation="softmax")(Flatten()(h)))
    # SGD: Adam's m / sqrt(v) turns float-rounding noise in near-zero gradients into
    # lr-sized steps over 24 steps; plain SGD at a small rate keeps the parity check at 1e-5
    model.compile(optimizer="sgd", loss="categorical_crossentropy", learning_rate=0.01)
    rng = np.random.default_rng(0)
    x = rng.random((steps * batch, 64, 16), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, steps * batch)]
    cfg = FitConfig(epochs=1, batch_size=batch, verbose=0, seed=0)
    return model, make_task(model, prepare_data(model, x, y), None, cfg, [])


def token_mlp_reference(steps: int, batch: int) -> dict:
    """Single-process training of `token_mlp`: its final state dict."""
    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import Strategy
    model, task = token_mlp(steps, batch)
    return train(task, Strategy(), model).state_dict
