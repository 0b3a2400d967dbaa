"""TerminateOnNaN inside the loop: the first non-finite loss is named by its step, across
the tally's folds of held losses, in a resumed epoch, and at the earliest step any rank saw."""
from types import SimpleNamespace

import pytest
import torch

from bigtrain.engine.finite_check import FiniteCheck, NonFiniteLoss
from bigtrain.engine.steps import Tally
from bigtrain.parallel.base import StepBatch


class _Ranks:
    """A strategy stand-in whose all-reduce takes the min with another rank's flag."""

    def __init__(self, other: float = float("inf")):
        self.other, self.reduced = other, 0

    def all_reduce(self, t, op):
        assert op == "min"
        self.reduced += 1
        t.copy_(torch.minimum(t, torch.tensor([self.other])))
        return t


def _run(losses, every, first=0, other=float("inf")):
    """Feed `losses` as steps first, first+1, ...; return (message or None, all-reduces)."""
    tally, ranks = Tally([[]], [None], "cpu"), _Ranks(other)
    check = FiniteCheck(SimpleNamespace(nan_check_every=every, batch_size=4), 0, first,
                         ranks, tally)
    batch = StepBatch([(torch.zeros(4, 2), torch.zeros(4), None)], [1.0])
    try:
        for step, loss in enumerate(losses, start=first):
            tally.add(batch, [torch.zeros(4, 2)], torch.tensor(loss))
            check.after_step(step, lambda *a, **k: None)
        check.check(0)
    except NonFiniteLoss as e:
        return str(e), ranks.reduced
    return None, ranks.reduced


def test_the_first_bad_step_is_named_across_folds_of_held_losses():
    losses = [1.0] * 150
    losses[70], losses[90] = float("nan"), float("inf")  # after one fold of 64 losses
    msg, reduced = _run(losses, every=100)
    assert "step 71 " in msg and "samples 280..283" in msg
    assert reduced == 1  # found by the check after step 100


def test_finite_losses_pass_every_check():
    msg, reduced = _run([0.5] * 130, every=50)
    assert msg is None and reduced == 3  # after steps 50 and 100, and at the end


def test_a_resumed_epoch_counts_its_steps_from_where_it_resumed():
    losses = [1.0] * 20
    losses[5] = float("-inf")
    msg, _ = _run(losses, every=10, first=30)  # steps 30..49: the bad one is step 35
    assert "step 36 " in msg


def test_every_rank_stops_at_the_earliest_bad_step_any_rank_saw():
    losses = [1.0] * 40
    losses[30] = float("nan")
    msg, _ = _run(losses, every=10, other=12.0)  # another rank's NaN at step 12
    assert "step 13 " in msg
    msg, _ = _run([1.0] * 40, every=10, other=12.0)  # this rank saw none: it stops too
    assert "step 13 " in msg


def test_the_tally_sums_losses_over_folds_by_their_samples():
    tally = Tally([[]], [None], "cpu")
    values = [float(i) for i in range(Tally.LOSS_SLOTS * 2 + 5)]
    for i, v in enumerate(values):
        rows = 3 if i % 2 else 5
        tally.add(StepBatch([(torch.zeros(rows, 1), torch.zeros(rows), None)], [1.0]),
                  [torch.zeros(rows, 1)], torch.tensor(v))
    weights = [3 if i % 2 else 5 for i in range(len(values))]
    expected = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    assert tally.logs(tally.state())["loss"] == pytest.approx(expected, rel=1e-12)
