import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from bigtrain.api.losses import get_loss
from bigtrain.api.metrics import get_metric

rng = np.random.default_rng(0)
LOGITS = torch.tensor(rng.normal(size=(16, 5)), dtype=torch.float32)
IDS = torch.tensor(rng.integers(0, 5, 16))
ONEHOT = F.one_hot(IDS, 5).float()


def test_categorical_from_logits_equals_from_probs_and_torch():
    ref = F.cross_entropy(LOGITS, IDS)
    logit_loss, prob_loss = get_loss("categorical_crossentropy"), get_loss("categorical_crossentropy")
    logit_loss.from_logits = True
    torch.testing.assert_close(logit_loss(ONEHOT, LOGITS), ref)
    torch.testing.assert_close(prob_loss(ONEHOT, LOGITS.softmax(-1)), ref, rtol=1e-5, atol=1e-6)


def test_sparse_categorical_and_sample_weight():
    loss = get_loss("sparse_categorical_crossentropy")
    loss.from_logits = True
    sw = torch.rand(16)
    ref = (F.cross_entropy(LOGITS, IDS, reduction="none") * sw).mean()
    torch.testing.assert_close(loss(IDS, LOGITS, sw), ref)


def test_binary_mse_mae_against_numpy():
    p = torch.rand(16, 1) * 0.98 + 0.01
    y = (torch.rand(16, 1) > 0.5).float()
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    torch.testing.assert_close(get_loss("binary_crossentropy")(y, p), bce.float())
    a, b = torch.randn(8, 3), torch.randn(8, 3)
    torch.testing.assert_close(get_loss("mse")(a, b), ((a - b) ** 2).mean())
    torch.testing.assert_close(get_loss("mae")(a, b), (a - b).abs().mean())


def test_softmax_ce_stays_finite_for_extreme_logits():
    loss = get_loss("categorical_crossentropy")
    loss.from_logits = True
    big = torch.tensor([[1000.0, -1000.0]])
    assert torch.isfinite(loss(torch.tensor([[0.0, 1.0]]), big))


def _metric(name, y, p):
    m = get_metric(name)
    m.reset("cpu")
    for i in range(0, len(y), 5):  # streamed in chunks, as the loop does
        m.update(y[i:i + 5], p[i:i + 5])
    return m.result()


def test_accuracy_kinds_follow_shapes():
    probs = LOGITS.softmax(-1)
    want = float((probs.argmax(-1) == IDS).float().mean())
    assert _metric("accuracy", ONEHOT, probs) == pytest.approx(want)
    assert _metric("accuracy", IDS, probs) == pytest.approx(want)
    p1 = torch.rand(16, 1)
    y1 = (torch.rand(16, 1) > 0.5).float()
    assert _metric("accuracy", y1, p1) == pytest.approx(float(((p1 > 0.5) == (y1 > 0.5)).float().mean()))


def test_top_k_and_errors():
    probs = LOGITS.softmax(-1)
    top2 = probs.topk(2, -1).indices
    want = float((top2 == IDS[:, None]).any(-1).float().mean())
    m = get_metric("top_k_categorical_accuracy")
    m.k = 2
    m.reset("cpu")
    m.update(ONEHOT, probs)
    assert m.result() == pytest.approx(want)
    a, b = torch.randn(16, 2), torch.randn(16, 2)
    assert _metric("mae", a, b) == pytest.approx(float((a - b).abs().mean()), rel=1e-6)


def test_auc_close_to_sklearn():
    y = torch.tensor(rng.integers(0, 2, 400)).float()
    p = torch.sigmoid(y * 1.5 + torch.tensor(rng.normal(size=400), dtype=torch.float32))
    assert _metric("auc", y, p) == pytest.approx(roc_auc_score(y.numpy(), p.numpy()), abs=5e-3)


def test_auc_is_keras_auc():
    """Keras's 200 thresholds: scores on a threshold, ties, 0 and 1, over two batches."""
    import keras
    y = rng.integers(0, 2, 300).astype("float32")
    p = np.clip(np.round(rng.uniform(-0.1, 1.1, 300) * 199) / 199, 0, 1).astype("float32")
    p[y == 1] = np.minimum(p[y == 1] + 0.1, 1.0)
    want = keras.metrics.AUC()
    m = get_metric("auc")
    m.reset("cpu")
    for part in (slice(0, 120), slice(120, 300)):
        want.update_state(y[part], p[part])
        m.update(torch.from_numpy(y[part]), torch.from_numpy(p[part]))
    assert m.result() == pytest.approx(float(want.result()), abs=1e-6)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*categorical_crossentropy"):
        get_loss("crossentropy_typo")
    with pytest.raises(ValueError, match="valid names: .*accuracy"):
        get_metric("acuracy")
