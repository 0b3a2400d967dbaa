"""Uneven shares and masked sequences: validation when ranks hold different numbers of
batches (FSDP all-gathers in every forward, so a rank that stops early hangs the others), a
masked recurrent layer on a rank's empty share of a small last batch, and a masked sequence
loss split into accumulated micro-batches (refused: its mean is over the whole batch's
real steps)."""
import numpy as np
import pytest
import torch

import bigtrain
from bigtrain.api.training import make_task, prepare_data
from bigtrain.engine.evaluate import evaluate
from bigtrain.engine.task import FitConfig
from bigtrain.layers import GRU, LSTM, Bidirectional, Dense, Embedding, Input
from bigtrain.models import Model
from bigtrain.parallel.base import Strategy

RNG = np.random.default_rng(0)


def _mlp():
    i = Input(shape=(5,))
    return Model(i, Dense(3, activation="softmax")(Dense(4, activation="relu")(i)))


class _Rank(Strategy):
    """One process playing rank `index` of 2 (no process group: all_reduce is the identity)."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def data_shard(self):
        return (self.index, 2)

    def all_reduce(self, tensor, op="sum"):
        return tensor


def _forwards_and_logs(model, x, y, rank: int, batch_size: int):
    """(forwards the module ran, logs) for `rank`'s share of an evaluate over (x, y)."""
    data = prepare_data(model, x, y, None)
    task = make_task(model, data, None, FitConfig(batch_size=batch_size), [])
    calls = []
    hook = model.net.register_forward_hook(lambda *_: calls.append(1))
    try:
        logs = evaluate(task, _Rank(rank), model.net, data, batch_size)
    finally:
        hook.remove()
    return len(calls), logs


@pytest.mark.parametrize("rows, batch_size", [(33, 8), (1, 8), (5, 1)])
def test_every_rank_runs_as_many_evaluate_forwards(rows, batch_size):
    model = _mlp()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = RNG.normal(size=(rows, 5)).astype("float32")
    y = RNG.integers(0, 3, rows)
    (n0, logs0), (n1, logs1) = (_forwards_and_logs(model, x, y, r, batch_size) for r in (0, 1))
    assert n0 == n1 == -(-(-(-rows // 2)) // batch_size)
    # the padding forwards count for nothing: rank 0's and 1's shares make up the whole
    share0 = -(-rows // 2)
    whole = model.evaluate(x, y, batch_size=batch_size, return_dict=True)
    if rows > 1:
        got = (logs0["loss"] * share0 + logs1["loss"] * (rows - share0)) / rows
        assert got == pytest.approx(whole["loss"], rel=1e-6)
    else:
        assert logs0["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def test_zero3_validation_with_uneven_shares_finishes_and_matches_one_process():
    x = RNG.normal(size=(16, 5)).astype("float32")
    y = RNG.integers(0, 3, 16)
    xv = RNG.normal(size=(9, 5)).astype("float32")  # 5 and 4 rows: 3 and 2 batches of 2
    yv = RNG.integers(0, 3, 9)
    logs = []
    for kw in ({}, {"strategy": "zero3", "devices": 2, "watchdog_timeout": 30}):
        bigtrain.set_seed(0)
        model = _mlp()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        history = model.fit(x, y, epochs=1, batch_size=8, validation_data=(xv, yv),
                            validation_batch_size=2, shuffle=False, verbose=0, **kw)
        logs.append(history.history)
    assert logs[1]["val_loss"][0] == pytest.approx(logs[0]["val_loss"][0], rel=1e-6)
    assert logs[1]["val_accuracy"] == logs[0]["val_accuracy"]


@pytest.mark.parametrize("rnn, width", [
    (lambda: LSTM(4), 4),
    (lambda: Bidirectional(GRU(4)), 8),
    (lambda: LSTM(4, return_sequences=True, go_backwards=True), 4),
    (lambda: GRU(4, recurrent_dropout=0.2), 4),
])
def test_masked_rnn_on_no_rows_gives_empty_outputs_and_zero_gradients(rnn, width):
    layer = rnn()
    i = Input(shape=(6,), dtype="int64")
    model = Model(i, layer(Embedding(30, 5, mask_zero=True)(i)))
    model.net.train()
    out = model.net(torch.zeros(0, 6, dtype=torch.int64))
    assert out.shape[0] == 0 and out.shape[-1] == width
    out.sum().backward()
    for name, p in model.net.named_parameters():  # DDP/FSDP reduce every parameter's grad
        assert p.grad is not None and not p.grad.any(), name


def test_masked_bigru_with_a_one_sample_last_batch_on_two_ranks_matches_one_process():
    x = RNG.integers(1, 30, size=(9, 6))
    x[::2, 4:] = 0  # trailing padding on every other row
    y = RNG.integers(0, 3, 9)
    weights = []
    for kw in ({}, {"strategy": "ddp", "devices": 2, "watchdog_timeout": 30}):
        bigtrain.set_seed(0)
        i = Input(shape=(6,), dtype="int64")
        h = Bidirectional(GRU(4))(Embedding(30, 5, mask_zero=True)(i))
        model = Model(i, Dense(3, activation="softmax")(h))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0, **kw)  # 4, 4, 1
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_masked_sequence_loss_with_accumulation_is_refused():
    i = Input(shape=(6,), dtype="int64")
    model = Model(i, Dense(2)(GRU(3, return_sequences=True)(Embedding(20, 4, mask_zero=True)(i))))
    model.compile(optimizer="sgd", loss="mse")
    ids = RNG.integers(1, 20, size=(8, 6))
    with pytest.raises(ValueError, match="time-step mask.*accumulate_steps=2"):
        model.fit(ids, np.zeros((8, 6, 2), "float32"), batch_size=8, accumulate_steps=2,
                  verbose=0)
    # without accumulation it trains
    model.fit(ids, np.zeros((8, 6, 2), "float32"), batch_size=8, verbose=0)
