"""Tensor parallelism over a transformer a user wrote (its own attention, an lm_head tied to
the token embedding), against one process.

What was wrong: a plan override naming the tied lm_head (`plan={r"head\\.lm":
"colwise_gather"}`) split its weight into a new DTensor parameter, so the lm_head and the
embedding were no longer one tensor and trained apart, without a word (weights 0.16 off one
process after 3 steps). An override may not split a tied layer; it is refused before any
rank starts (a layer whose weights its parent's forward reads stays whole). An override of the
MLP Linears, which the planner keeps whole in a custom forward, splits them and trains as
one process."""
import pytest
import torch.nn.functional as F
from torch import nn

from bigtrain.parallel.tensor_parallel import TensorParallel
from bigtrain.parallel.tensor_plan import tp_plan
from tests.dist import run_ranks
from tests.parallel.transformer_review_cases import (BATCH, HandGPT, compiled, data, max_diff,
                                                     reference, run_cases)

TOL = 1e-5
MLP_SPLIT = {r"\.fc$": "colwise", r"\.out$": "rowwise"}


class ReadsHead(nn.Module):
    """The parent applies its head's weight itself."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        return F.linear(self.body(x), self.head.weight)


def test_an_override_that_splits_a_tied_layer_is_refused_before_any_rank_starts():
    with pytest.raises(ValueError, match=r"would split 'head.lm', which shares its weight "
                                         r"with another layer.*leave it replicated"):
        tp_plan(HandGPT(), 2, {r"head\.lm": "colwise_gather"})
    assert tp_plan(ReadsHead(), 2, {r"head": "colwise"}).get("head", "replicate") == "replicate"
    assert tp_plan(HandGPT(), 2, {r"head\.lm": "replicate"})["head.lm"] == "replicate"
    model = compiled("hand_gpt")
    x, y = data()
    strategy = TensorParallel(degree=2, plan={r"head\.lm": "colwise_gather"})
    with pytest.raises(ValueError, match="shares its weight with another layer"):
        model.fit(x, y, batch_size=BATCH, verbose=0, strategy=strategy, devices=2, timeout=30)


def test_an_override_splitting_a_custom_blocks_mlp_trains_as_one_process():
    plan = tp_plan(HandGPT(), 2, MLP_SPLIT)
    assert plan["blocks.0.fc"] == "colwise" and plan["blocks.0.out"] == "rowwise"
    assert plan["head.lm"] == "replicate"  # tied: kept whole
    case = ("hand_gpt", TensorParallel(degree=2, plan=MLP_SPLIT))
    got = run_ranks(run_cases, 2, [case], timeout=60)[0][repr(case)]
    assert max_diff(reference("hand_gpt"), got) <= TOL
    assert (got["embed.tok.weight"] == got["head.lm.weight"]).all()
