"""Uneven batches under the pipeline: a batch smaller than the run's batch size (the epoch's
last, a replica's short share, fewer samples than micro-batches, none at all) trains
exactly as one process does on those samples, for every schedule and for dp x pp.
"""
import contextlib

import pytest
import torch

from bigtrain.engine.data import shard_bounds
from bigtrain.parallel.base import DistEnv, StepBatch
from bigtrain.parallel.hybrid import Hybrid
from bigtrain.parallel.pipeline import Pipeline
from tests.dist import run_ranks
from tests.parallel.test_pipeline import (BATCH, CFG, TOL, gpt_compute_loss, make_gpt,
                                          make_optimizer, max_diff, train_reference)

# global batch rows per step: full (8), the epoch's uneven last batch (5), fewer rows than
# the 4 micro-batches (3, then 1), full again (the stages keep their shape after a short one)
SIZES = (8, 5, 3, 1, 8)


def uneven_data(step):
    g = torch.Generator().manual_seed(4000 + step)
    n = SIZES[step]
    return (torch.randint(0, CFG.vocab_size, (n, CFG.block_size), generator=g),
            torch.randint(0, CFG.vocab_size, (n, CFG.block_size), generator=g))


def train_uneven(rank, world, strategy):
    """Engine-style steps on `SIZES` batches: this replica's share (maybe empty) in 2 micros,
    loss weights (micro rows / global rows) x replicas, as `make_step_batch` builds them."""
    strategy.validate(world, BATCH)
    strategy.setup(DistEnv(rank=rank, world_size=world))
    module = strategy.setup_module(make_gpt())
    opt = strategy.setup_optimizer(module, make_optimizer)
    index, count = strategy.data_shard()
    losses = []
    for step in range(len(SIZES)):
        x, y = uneven_data(step)
        lo, hi = shard_bounds(x.shape[0], index, count)
        xs, ys = x[lo:hi], y[lo:hi]
        half = xs.shape[0] // 2
        micro = [(xs[:half], ys[:half], None), (xs[half:], ys[half:], None)]
        weights = [half / x.shape[0] * count, (xs.shape[0] - half) / x.shape[0] * count]
        outs, loss = strategy.train_step(module, opt, StepBatch(micro, weights),
                                         gpt_compute_loss, contextlib.nullcontext)
        assert [o.shape[0] for o in outs] == [half, xs.shape[0] - half]
        losses.append((float(loss), xs.shape[0]))
    with torch.no_grad():  # evaluation of 11 rows: two chunks of 8, the second padded
        g = torch.Generator().manual_seed(5)
        probe = module(torch.randint(0, CFG.vocab_size, (11, CFG.block_size), generator=g))
    full = strategy.full_state_dict(module)
    strategy.teardown()
    return ({k: v.numpy() for k, v in full.items()} if rank == 0 else None), losses, \
        probe.numpy()


def _schedules(rank, world):
    return {s: train_uneven(rank, world, Pipeline(stages=2, microbatches=4, schedule=s))
            for s in ("gpipe", "1f1b", "interleaved", "zero_bubble")}


def _probe_reference(state):
    model = make_gpt()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return model(torch.randint(0, CFG.vocab_size, (11, CFG.block_size), generator=g))


def test_every_schedule_trains_uneven_batches_as_one_process():
    ref, ref_losses = train_reference(make_gpt, uneven_data, gpt_compute_loss,
                                      steps=len(SIZES))
    before_last, _ = train_reference(make_gpt, uneven_data, gpt_compute_loss,
                                     steps=len(SIZES) - 1)
    assert max_diff(before_last, ref) > 100 * TOL  # the check tells one step apart
    results = run_ranks(_schedules, 2, timeout=300)
    for schedule, (full, losses, probe) in results[0].items():
        assert max_diff(full, ref) <= TOL, schedule
        # the reported loss is the mean over the batch's real samples, on every rank
        assert [l for l, _ in losses] == pytest.approx(ref_losses, abs=1e-5), schedule
        assert losses == results[1][schedule][1], schedule
        expected = _probe_reference(full)
        for r in range(2):  # evaluation output of every rank, padding cut off
            assert torch.allclose(torch.as_tensor(results[r][schedule][2]), expected,
                                  atol=1e-5), (schedule, r)


def _hybrid(rank, world):
    return train_uneven(rank, world, Hybrid(dp=2, pp=2, microbatches=2, schedule="1f1b"))


def test_dp_x_pp_trains_uneven_shares_as_one_process():
    # replica shares per step: 4+4, 3+2, 2+1, 1+0 (an empty share), 4+4
    ref, ref_losses = train_reference(make_gpt, uneven_data, gpt_compute_loss,
                                      steps=len(SIZES))
    results = run_ranks(_hybrid, 4, timeout=300)
    assert max_diff(results[0][0], ref) <= TOL
    dims = Hybrid(dp=2, pp=2).dims(4)
    first_of = {dims.coords(r)["dp"]: r for r in reversed(range(4))}
    for r in range(4):  # the ranks of one replica report its loss alike
        assert results[r][1] == results[first_of[dims.coords(r)["dp"]]][1]
    for step, expected in enumerate(ref_losses):
        # replica means weighted by their samples give the global mean (an empty share: 0)
        shares = [results[first_of[d]][1][step] for d in range(2)]
        assert shares[1][1] or shares[1][0] == 0.0
        mean = sum(l * n for l, n in shares) / SIZES[step]
        assert mean == pytest.approx(expected, abs=1e-5), step


def seed_model_fit(x, y, xv, yv, **kw):
    """The seed example's model (README) fitted one epoch: (History, weights)."""
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Model
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(1000,))
    model = Model(inp, Dense(10, activation="softmax")(Dense(512, activation="relu")(inp)))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, epochs=1, batch_size=32, verbose=0, validation_data=(xv, yv), **kw)
    return hist.history, {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def test_seed_example_on_kjv_under_the_pipeline_matches_one_process():
    # the full data set has 10,972 verses: its last batch of 32 holds 28, 7 per micro-batch;
    # 60 verses keep that last batch (28) and 50 validation verses a padded chunk of 18
    from bigtrain.datasets import kjv_tfidf
    (x, y), (xv, yv) = kjv_tfidf(num_features=1000, num_classes=10)
    x, y, xv, yv = x[:60], y[:60], xv[:50], yv[:50]
    ref_hist, ref = seed_model_fit(x, y, xv, yv)
    hist, weights = seed_model_fit(x, y, xv, yv, strategy="pipeline", devices=2)
    assert max_diff(weights, ref) <= TOL
    assert sorted(hist) == sorted(ref_hist)
    for key in ref_hist:  # loss and accuracy over the real samples, training and validation
        assert hist[key] == pytest.approx(ref_hist[key], abs=1e-5), key


def test_gpt_kjv_example_runs_under_the_pipeline_with_an_uneven_last_batch():
    from tests.readme.commands import SHORTER, run_documented
    # the docstring's command as its test runs it (and sharing that run): 40 windows in
    # batches of 32, so the last batch has 8 windows, 2 per micro-batch
    assert SHORTER["gpt_kjv.py"][:2] == ["--windows", "40"]
    out = run_documented("python examples/gpt_kjv.py --strategy pipeline --devices 2")
    assert "validation loss" in out and "sample:" in out, out[-3000:]
