"""The CTR pieces the parameter-server example trains: synthetic clicks and Wide & Deep."""
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from bigtrain.data.ctr import CTRConfig, make_ctr
from bigtrain.zoo.wide_and_deep import WideAndDeep


def test_click_data_is_deterministic_and_ids_stay_in_their_field():
    cfg = CTRConfig(num_samples=500, num_ids=80, num_fields=4, num_dense=3, seed=7)
    a, b = make_ctr(cfg), make_ctr(cfg)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.clicks, b.clicks)
    assert a.ids.shape == (500, 4) and a.dense.shape == (500, 3) and a.clicks.shape == (500, 1)
    field = a.ids // 20
    assert torch.equal(field, torch.arange(4).expand(500, 4))
    assert set(a.clicks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a.ids, make_ctr(CTRConfig(500, 80, 4, 3, seed=8)).ids)


def test_bad_ctr_config_is_refused():
    with pytest.raises(ValueError, match="num_ids"):
        CTRConfig(num_ids=3, num_fields=4)
    with pytest.raises(ValueError, match="skew"):
        CTRConfig(skew=0.5)


def test_wide_and_deep_learns_the_hidden_click_model():
    torch.manual_seed(0)
    data = make_ctr(CTRConfig(num_samples=4000, num_ids=100, num_fields=4, num_dense=2))
    train, test = data.split(0.75)
    model = WideAndDeep(100, num_fields=4, num_dense=2, embed_dim=4, hidden=(16,))
    assert model(test.ids[:5], test.dense[:5]).shape == (5, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):  # full-batch steps
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(train.ids, train.dense), train.clicks).backward()
        opt.step()
    with torch.no_grad():
        scores = model(test.ids, test.dense).squeeze(1)
    clicks = test.clicks.squeeze(1).numpy()
    auc, oracle = roc_auc_score(clicks, scores.numpy()), roc_auc_score(clicks, test.oracle_logits)
    assert auc > 0.5 + 0.7 * (oracle - 0.5), (auc, oracle)  # held-out, near the best possible
