"""Tally: losses and metrics accumulated over a pass, as the loop feeds them."""
import pytest
import torch

from bigtrain.api.metrics import get_metric
from bigtrain.engine.steps import Tally
from bigtrain.parallel.base import StepBatch


def test_tally_metrics_read_probabilities_where_needed_and_ask_once():
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(40, 5, generator=g), torch.randint(0, 5, (40,), generator=g)
    probs = logits.softmax(-1)
    names = ["accuracy", "mse", "top_k_categorical_accuracy"]
    fed, ref = [get_metric(n) for n in names], [get_metric(n) for n in names]
    asked = []
    ask = fed[1].reads_scores_only
    fed[1].reads_scores_only = lambda y, p: asked.append(1) or ask(y, p)
    tally = Tally([fed], [lambda t: t.softmax(-1)], "cpu")
    for m in ref:
        m.reset("cpu")
    for i in range(0, 40, 16):  # 16, 16, 8 rows: the last batch is smaller
        x, y = logits[i:i + 16], ids[i:i + 16].reshape(-1, 1).int()  # (B, 1) int32 ids
        tally.add(StepBatch([(x, y, None)], [1.0]), [x], torch.tensor(float(i)))
        for m in ref:
            m.update(ids[i:i + 16], probs[i:i + 16])
    logs = tally.logs(tally.state())
    assert asked == [1]
    assert logs["loss"] == pytest.approx((0 * 16 + 16 * 16 + 32 * 8) / 40)
    for m in ref:
        assert logs[m.name] == pytest.approx(m.result(), rel=1e-6)
