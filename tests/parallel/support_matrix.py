"""The support matrix: every strategy x model x optimizer, each cell trained like one process
or refused before any rank starts.

Three declarative lists make the matrix; add an entry to extend it:

    MODELS      name -> ModelCase (builds a compiled bigtrain Model and its data)
    OPTIMIZERS  name -> factory of a bigtrain optimizer spec
    ROWS        name -> Row (a strategy factory and its number of ranks)

A cell is (row, model, optimizer). It is checked in three steps:

1. `refusal(row, cell)`: call the user-facing `model.fit(..., devices=N)` with the launcher
   replaced by a stub; an error raised before the stub is reached is the cell's refusal
   (it must be a ValueError/TypeError that names a fix).
2. `reference(cell)`: single-process training through the engine (>= 5 optimizer steps),
   and the same with one step fewer (the "can tell one step apart" guard).
3. `run_row_cells`: inside one group of ranks (tests.dist.run_ranks), every cell of the row
   that was not refused, one after the other, each on a fresh process group so that a cell
   that fails on one rank only cannot spoil the next. Per cell: rank 0's full state, or the
   error each rank raised.

Example (one row):
    pytest -q tests/parallel/test_support_matrix.py -k zero2
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import numpy as np
import torch

import bigtrain
from bigtrain import optimizers as opt
from bigtrain.callbacks import Callback
from bigtrain.layers import (LSTM, Conv2D, Dense, Embedding, Flatten, Input, LayerNormalization,
                             MaxPooling2D)
from bigtrain.losses import BinaryCrossentropy, SparseCategoricalCrossentropy
from bigtrain.models import Model
from bigtrain.parallel import Hybrid, ParameterServer, Pipeline, resolve_strategy
from bigtrain.zoo.gpt import GPT, GPTConfig
from bigtrain.zoo.wide_and_deep import WideAndDeep

TOL = 1e-5      # max |param difference| against one process, fp32
# the last step alone must move some weight by more than GUARD * TOL, so that the check can
# tell one step apart (Adam moves a weight by about its rate, 1e-3, per step)
GUARD = 50
BATCH = 16      # global batch: splits over 2, 4 ranks and 4 pipeline micro-batches per replica
STEPS = 5       # optimizer steps per cell (6 for the uneven-last-batch case)
CELL_PG_TIMEOUT_S = 20.0  # a cell whose ranks disagree fails after this, not the whole row


# ---- models ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCase:
    """One model column of the matrix.

    Attributes:
        build: () -> an uncompiled bigtrain Model (built after the seed is set).
        loss: the loss passed to compile.
        data: (n, rng) -> (x, y) numpy arrays (x may be a list for several inputs).
        about: one line for the README's table.
        samples: training samples; BATCH * STEPS, or more for an uneven last batch.
    """
    build: Callable[[], Model]
    loss: object
    data: Callable
    about: str
    samples: int = BATCH * STEPS


def _seed_mlp() -> Model:
    """The seed example's network: 1000 -> 64 relu -> 10 softmax."""
    inp = Input(shape=(1000,))
    return Model(inp, Dense(10, activation="softmax")(Dense(64, activation="relu")(inp)))


def _seed_data(n, rng):
    return rng.random((n, 1000), dtype=np.float32), rng.integers(0, 10, n)


def _odd_softmax_mlp() -> Model:
    """Odd widths (37 -> 24 softmax -> 13 tanh -> 5) and a softmax in a hidden layer: the
    softmax layer's 24 outputs split over 2 ranks (tensor parallel must not normalise over
    half of them), the 13 of the next one do not."""
    inp = Input(shape=(37,))
    h = Dense(13, activation="tanh")(Dense(24, activation="softmax")(inp))
    return Model(inp, Dense(5, activation="softmax")(h))


def _odd_data(n, rng):
    return rng.standard_normal((n, 37), dtype=np.float32), rng.integers(0, 5, n)


def _embed_layernorm() -> Model:
    """Embedding(50, 16) over 8 ids -> LayerNorm -> Flatten -> 4 classes."""
    inp = Input(shape=(8,), dtype="int64")
    h = Flatten()(LayerNormalization()(Embedding(50, 16)(inp)))
    return Model(inp, Dense(4, activation="softmax")(h))


def _embed_data(n, rng):
    x = rng.integers(0, 50, (n, 8))
    return x, x.sum(1) % 4


def _conv_tiny() -> Model:
    """(6, 6, 1) channels-last -> Conv2D(4, 3) relu -> MaxPooling2D(2) -> Flatten -> 3."""
    inp = Input(shape=(6, 6, 1))
    h = Flatten()(MaxPooling2D(2)(Conv2D(4, 3, activation="relu")(inp)))
    return Model(inp, Dense(3, activation="softmax")(h))


def _conv_data(n, rng):
    x = rng.standard_normal((n, 6, 6, 1), dtype=np.float32)
    return x, (x[:, :3].sum((1, 2, 3)) > 0).astype(np.int64) + (x[:, 3:].sum((1, 2, 3)) > 0)


def _lstm_tiny() -> Model:
    """Embedding(20, 6, mask_zero=True) over 7 ids -> LSTM(5) -> 3 classes."""
    inp = Input(shape=(7,), dtype="int64")
    h = LSTM(5)(Embedding(20, 6, mask_zero=True)(inp))
    return Model(inp, Dense(3, activation="softmax")(h))


def _lstm_data(n, rng):
    """Right-padded id sequences (0 = padding) of 2 to 7 real ids."""
    x = rng.integers(1, 20, (n, 7))
    x[np.arange(7)[None, :] >= rng.integers(2, 8, (n, 1))] = 0
    return x, x.sum(1) % 3


GPT_CFG = GPTConfig.tiny()  # 4 blocks, width 32, 4 heads, 16 tokens, vocab 64


def _gpt_data(n, rng):
    x = rng.integers(0, GPT_CFG.vocab_size, (n, GPT_CFG.block_size))
    return x, np.roll(x, -1, axis=1)  # next-token targets (B, T)


def _wide_deep_data(n, rng):
    ids = rng.integers(0, 40, (n, 4)) + 40 * np.arange(4)  # 4 fields of 40 ids each
    dense = rng.standard_normal((n, 3), dtype=np.float32)
    clicks = (rng.random((n, 1)) < 0.3).astype(np.float32)
    return [ids, dense], clicks


MODELS: dict[str, ModelCase] = {
    "seed_mlp": ModelCase(_seed_mlp, "sparse_categorical_crossentropy", _seed_data,
                          "the seed example's MLP, 1000 -> 64 relu -> 10 softmax"),
    "seed_mlp_uneven_last_batch": ModelCase(
        _seed_mlp, "sparse_categorical_crossentropy", _seed_data,
        "the same, 6 steps, the last batch 10 of 16 samples (over 3 ranks: 4, 3, 3)",
        BATCH * STEPS + 10),
    "odd_softmax_mlp": ModelCase(_odd_softmax_mlp, "sparse_categorical_crossentropy",
                                 _odd_data, "37 -> 24 softmax -> 13 tanh -> 5 softmax"),
    "embedding_layernorm": ModelCase(_embed_layernorm, "sparse_categorical_crossentropy",
                                     _embed_data,
                                     "Embedding(50, 16) -> LayerNormalization -> Dense(4)"),
    "conv2d_tiny": ModelCase(_conv_tiny, "sparse_categorical_crossentropy", _conv_data,
                             "(6, 6, 1) -> Conv2D(4, 3) -> MaxPooling2D -> Flatten -> Dense(3)"),
    "lstm_masked_tiny": ModelCase(_lstm_tiny, "sparse_categorical_crossentropy", _lstm_data,
                                  "Embedding(20, 6, mask_zero=True) -> LSTM(5) -> Dense(3), "
                                  "right-padded ids"),
    "gpt_tiny": ModelCase(lambda: Model(GPT(GPT_CFG)),
                          SparseCategoricalCrossentropy(from_logits=True), _gpt_data,
                          "`bigtrain.zoo.gpt`, 4 blocks, width 32, tied embedding"),
    "wide_and_deep": ModelCase(
        lambda: Model(WideAndDeep(160, num_fields=4, num_dense=3, embed_dim=4, hidden=(16,))),
        BinaryCrossentropy(from_logits=True), _wide_deep_data,
        "`bigtrain.zoo.wide_and_deep`, 4 categorical id fields + 3 dense features"),
}

# ---- optimizers ---------------------------------------------------------------------------
# rates large enough that one step moves the weights by >> TOL (the guard), small enough
# that 5 steps stay far from divergence
OPTIMIZERS: dict[str, Callable[[], opt.OptimizerSpec]] = {
    "sgd": lambda: opt.SGD(learning_rate=0.1),  # plain: a wrong gradient scale shows as is
    "sgd_momentum": lambda: opt.SGD(learning_rate=0.05, momentum=0.9),
    "adam": lambda: opt.Adam(learning_rate=1e-3),
    "adamw": lambda: opt.AdamW(learning_rate=1e-3),
    # RMSprop's first step is about 3x the rate whatever the gradient's size, so float
    # rounding in small gradients (another summation order) shows in proportion to the rate
    "rmsprop": lambda: opt.RMSprop(learning_rate=5e-4),
}


# ---- strategies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One strategy row: `make()` builds a fresh strategy for each cell, on `ranks` ranks;
    `label` is how the README's table writes it."""
    make: Callable[[], object]
    ranks: int
    label: str


def _named(name: str) -> Callable[[], object]:
    return lambda: resolve_strategy(name)


def _pipeline(schedule: str) -> Callable[[], object]:
    return lambda: Pipeline(microbatches=4, schedule=schedule)


SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero_bubble")

ROWS: dict[str, Row] = {
    "single": Row(_named("single"), 1, '`"single"`'),
    "ddp_2": Row(_named("ddp"), 2, '`"ddp"`'),
    "ddp_3": Row(_named("ddp"), 3, '`"ddp"`'),
    "zero1": Row(_named("zero1"), 2, '`"zero1"`'),
    "zero2": Row(_named("zero2"), 2, '`"zero2"`'),
    "zero3": Row(_named("zero3"), 2, '`"zero3"`'),
    "fsdp_offload": Row(_named("fsdp_offload"), 2, '`"fsdp_offload"`'),
    "ddp_balanced": Row(_named("ddp_balanced"), 2, '`"ddp_balanced"`'),
    "ddp_cpu_optimizer": Row(_named("ddp_cpu_optimizer"), 2, '`"ddp_cpu_optimizer"`'),
    "tensor": Row(_named("tensor"), 2, '`"tensor"`'),
    **{f"pipeline_{s}": Row(_pipeline(s), 2, f'`Pipeline(microbatches=4, schedule="{s}")`')
       for s in SCHEDULES},
    "hybrid_dp2_tp2": Row(lambda: Hybrid(dp=2, tp=2), 4, "`Hybrid(dp=2, tp=2)`"),
    "hybrid_dp2_pp2": Row(lambda: Hybrid(dp=2, pp=2, microbatches=4), 4,
                          "`Hybrid(dp=2, pp=2, microbatches=4)`"),
    # 2 workers and 1 server
    "ps_bsp": Row(lambda: ParameterServer(servers=1, mode="bsp"), 3,
                  '`ParameterServer(servers=1, mode="bsp")`'),
}


def cells() -> list[tuple[str, str]]:
    """Every (model, optimizer) pair of a row, in table order."""
    return [(m, o) for m in MODELS for o in OPTIMIZERS]


# ---- building one cell ----------------------------------------------------------------------
def build_cell(model_name: str, opt_name: str, samples: int | None = None):
    """(compiled model, x, y) of a cell, identical in every process."""
    case = MODELS[model_name]
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    model = case.build()
    model.compile(optimizer=OPTIMIZERS[opt_name](), loss=case.loss)
    x, y = case.data(case.samples if samples is None else samples, np.random.default_rng(0))
    return model, x, y


def cell_task(model_name: str, opt_name: str, samples: int | None = None):
    """(model, TrainTask) of a cell for the engine: one epoch, seeded shuffle, silent."""
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.diagnose.watchdog import WatchdogConfig
    from bigtrain.engine.task import FitConfig
    model, x, y = build_cell(model_name, opt_name, samples)
    cfg = FitConfig(epochs=1, batch_size=BATCH, verbose=0, seed=0)
    task = make_task(model, prepare_data(model, x, y), None, cfg, [])
    task.watchdog = WatchdogConfig(enabled=False)  # run_ranks' timeouts guard hangs here
    return model, task


class _KeepStateBefore(Callback):
    """Keeps a copy of the weights after batch `batch` (0-based) of the epoch."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch, self.state = batch, None

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.state = {k: v.detach().clone() for k, v in self.model.net.state_dict().items()}


def reference(model_name: str, opt_name: str) -> tuple[dict, float]:
    """Single-process final state of a cell, and how far its last step moved the weights
    (the largest |difference| to the state one step before)."""
    from bigtrain.engine.loop import train
    from bigtrain.parallel.base import Strategy
    model, task = cell_task(model_name, opt_name)
    steps = -(-MODELS[model_name].samples // BATCH)
    keep = _KeepStateBefore(steps - 2)
    task.callbacks.append(keep)
    final = train(task, Strategy(), model).state_dict
    return final, max_diff(final, keep.state)


def max_diff(a: dict, b: dict) -> float:
    if set(a) != set(b):
        raise AssertionError(f"state keys differ: only in one {sorted(set(a) ^ set(b))}")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---- refusal before launch --------------------------------------------------------------------
class _Launched(Exception):
    """Raised by the stub launcher: fit got as far as starting ranks."""


HINTS = ("use ", "set ", "pass ", "choose ", "instead", "run ")


def refusal(row_name: str, model_name: str, opt_name: str) -> str | None:
    """The error `fit(devices=N)` raises before starting any rank, or None when it would
    launch. Only a ValueError/TypeError whose message names a fix counts; anything else
    is re-raised (it is a crash, not a refusal)."""
    from unittest import mock

    from bigtrain.launch import launcher
    row = ROWS[row_name]
    if row.ranks == 1:
        return None
    model, x, y = build_cell(model_name, opt_name)

    def stub(*args, **kwargs):
        raise _Launched

    with mock.patch.object(launcher, "launch", stub):
        try:
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, strategy=row.make(),
                      devices=row.ranks)
        except _Launched:
            return None
        except (ValueError, TypeError) as e:
            msg = str(e)
            if not any(h in msg.lower() for h in HINTS):
                raise AssertionError(f"{row_name}/{model_name}/{opt_name} is refused without "
                                     f"saying what to use instead: {msg}") from e
            return f"{type(e).__name__}: {msg}"
    raise AssertionError("fit returned without launching")  # pragma: no cover


# ---- the cells of one row, on ranks -------------------------------------------------------------
def _fresh_group(store, rank: int, world_size: int, tag: str) -> None:
    """Replace the default process group by a new one for the next cell (the old one may
    hold collectives a failed cell left unmatched)."""
    import torch.distributed as dist

    from bigtrain.launch.group_start import start_group
    if dist.is_initialized():
        dist.destroy_process_group()
    start_group("gloo", store, rank, world_size, timedelta(seconds=CELL_PG_TIMEOUT_S), tag=tag)


def run_row_cells(rank: int, world_size: int, row: str | Callable, todo: list) -> dict:
    """Inside run_ranks: train every (model, optimizer) in `todo` with the strategy of row
    `row` (a name in ROWS, or a module-level strategy factory).

    Returns {(model, opt): ("ok", state on rank 0 / None elsewhere) or ("error", text)}.
    """
    import torch.distributed as dist

    from bigtrain.engine.loop import run_rank
    from bigtrain.parallel.base import DistEnv
    store = dist.distributed_c10d._get_default_store()
    env = DistEnv(rank=rank, world_size=world_size, local_rank=rank,
                  local_world_size=world_size, device=torch.device("cpu"))
    make = ROWS[row].make if isinstance(row, str) else row
    out = {}
    for i, (model_name, opt_name) in enumerate(todo):
        _fresh_group(store, rank, world_size, f"cell-{i}")
        try:
            model, task = cell_task(model_name, opt_name)
            result = run_rank(task, make(), model, env)
            out[(model_name, opt_name)] = ("ok", result.state_dict if rank == 0 else None)
        except Exception:  # noqa: BLE001 - a failing cell is a result, the row goes on
            out[(model_name, opt_name)] = ("error", _short_trace())
    return out


def _short_trace() -> str:
    """The current exception in one line: its type and message, and where in bigtrain (or
    the test) it was raised from."""
    import sys
    exc = sys.exc_info()[1]
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/bigtrain/" in f.filename or "/tests/" in f.filename]
    where = f" (at {frames[-1].filename.rsplit('/', 2)[-2]}/" \
            f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}{where}"


def single_cell(model_name: str, opt_name: str) -> dict:
    """The "single" row: the user-facing fit in this process, rank 0's weights."""
    model, x, y = build_cell(model_name, opt_name)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, strategy="single")
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}
