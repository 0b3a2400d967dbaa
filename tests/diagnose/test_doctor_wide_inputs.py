"""The data profile on wide inputs (more features than the linear model reads) and on
image-like data whose border pixels are near-constant."""
import numpy as np
import pytest

from bigtrain.diagnose.baseline_checks import check_profile
from bigtrain.diagnose.data_checks import check_data
from bigtrain.diagnose.profile import MAX_FEATURES, profile_data, shift_profile

CLASS_LOSS = "sparse_categorical_crossentropy"


def _wide(n: int = 1200, d: int = 640, seed: int = 0):
    """(n, d) features, 3 classes from a linear rule on 20 of them."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype("float32")
    y = (x[:, :20] @ rng.standard_normal((20, 3))).argmax(1)
    return x, y


def test_wide_inputs_get_a_linear_baseline_that_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    x, y = _wide()
    p = profile_data(x[:1000], y[:1000], x[1000:], y[1000:], loss=CLASS_LOSS)
    assert p["features"] == 640 and p["linear"]["features"] == MAX_FEATURES
    ref = LogisticRegression(max_iter=300).fit(x[:1000], y[:1000]).score(x[1000:], y[1000:])
    assert p["linear"]["val"] == pytest.approx(ref, abs=0.1)


def test_wide_inputs_with_shuffled_labels_get_a_label_finding():
    x, y = _wide()
    y = np.random.default_rng(1).permutation(y)
    p = profile_data(x[:1000], y[:1000], x[1000:], y[1000:], loss=CLASS_LOSS)
    assert p["label_issues"]["share"] > 0.3  # about 2/3 of shuffled 3-class labels are wrong
    kinds = {f.kind for f in check_profile(p, {"val_accuracy": [0.34]})}
    assert "label_noise" in kinds


def test_a_skipped_check_is_reported():
    x, y = _wide(n=150, d=20)
    p = profile_data(x, y, loss=CLASS_LOSS)
    assert "label_issues" not in p or p["label_issues"] is None
    kinds = {f.kind for f in check_profile(p, {})}
    assert "checks_skipped" in kinds


def _digits_like(n: int = 1000, seed: int = 0) -> np.ndarray:
    """Pixels in 0..1 with a border that is 0 except in one row (like MNIST's edges)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 100), dtype="float32")
    x[:, 20:] = rng.random((n, 80)) * (rng.random((n, 80)) < 0.5)
    x[0, :20] = 0.01  # one stroke that reaches the border
    return x


def test_near_constant_pixels_raise_no_scale_or_shift_alarm():
    x, xv = _digits_like(), _digits_like(seed=1)
    assert not [f for f in check_data(x) if f.kind == "feature_scale"]
    assert shift_profile(x, xv)["max_mean_shift"] < 0.5
    p = profile_data(x, None, xv, None)
    assert not [f for f in check_profile(p, {}) if f.kind in
                ("feature_scale", "unscaled_features", "train_val_shift")]


def test_unscaled_pixels_are_still_flagged():
    x, xv = _digits_like() * 2550 + 1000, _digits_like(seed=1) * 2550 + 1000
    kinds = {f.kind for f in check_profile(profile_data(x, None, xv, None), {})}
    assert kinds & {"feature_scale", "unscaled_features"}


def test_raw_breast_cancer_features_are_still_flagged():
    from sklearn.datasets import load_breast_cancer
    x, y = load_breast_cancer(return_X_y=True)
    found = [f for f in check_data(x.astype("float32"), y) if f.kind == "feature_scale"]
    assert found and found[0].severity == "warning"
