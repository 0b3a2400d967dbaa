"""Moderate class imbalance (5:1, below the 10:1 the data check warns at) on real breast
cancer data: a model stuck at the majority class's accuracy gets a class_imbalance warning
naming it (it used to get none), and a model that learns both classes gets none."""
import numpy as np

from bigtrain.optimizers import SGD, Adam
from tests.diagnose.adversary_runs import fit_run, mlp, shown, sklearn_data
from tests.diagnose.real_runs import ranked


def _five_to_one(scale: bool):
    """Breast cancer split 80/20, every benign row (class 1) kept and a fifth as many
    malignant ones (class 0), in training and validation alike."""
    x, y, xv, yv = sklearn_data("breast_cancer", scale=scale)

    def keep(x, y):
        benign, malignant = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        rows = np.sort(np.concatenate([benign, malignant[:len(benign) // 5]]))
        return x[rows], y[rows]
    return (*keep(x, y), *keep(xv, yv))


def test_a_model_stuck_at_the_majority_share_is_told_about_the_imbalance():
    data = _five_to_one(scale=False)
    majority = data[3].mean()  # benign share of the validation rows
    record, history = fit_run(mlp(30, (16,), 2), data, SGD(learning_rate=0.1), epochs=4)
    assert abs(max(history["val_accuracy"]) - majority) < 0.01  # it answers "benign" always
    findings = ranked(record)
    found = [f for f in findings if f.kind == "class_imbalance"]
    assert found and found[0].severity == "warning", shown(findings)
    assert "5.0x" in found[0].evidence and f"({majority:.3f})" in found[0].evidence
    assert "class_weight={0: " in found[0].advice
    kinds = [f.kind for f in findings]
    assert kinds.index("class_imbalance") < kinds.index("below_baseline")  # the why first


def test_a_model_that_learns_both_classes_gets_no_imbalance_warning():
    record, history = fit_run(mlp(30, (16,), 2), _five_to_one(scale=True),
                              Adam(learning_rate=1e-3), epochs=8)
    assert max(history["val_accuracy"]) > 0.95
    assert "class_imbalance" not in [f.kind for f in ranked(record)], shown(ranked(record))
