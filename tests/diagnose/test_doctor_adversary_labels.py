"""Labels shuffled apart from their rows on a small real dataset (wine: 142 training rows,
too few for the cleanlab label check): the doctor must still name the labels first, from the
linear model and the trained model both scoring what a constant guess of the validation
split's most common class scores. The same run on the true labels gets no warning at all."""
import numpy as np

from bigtrain.optimizers import Adam
from tests.diagnose.adversary_runs import fit_run, mlp, shown, sklearn_data
from tests.diagnose.real_runs import ranked


def _wine_run(shuffle: bool):
    x, y, xv, yv = sklearn_data("wine")
    if shuffle:
        y = np.random.default_rng(1).permutation(y)
    return fit_run(mlp(13, (32,), 3), (x, y, xv, yv), Adam(learning_rate=1e-2), epochs=15)


def test_shuffled_labels_on_a_small_dataset_are_named_first():
    record, history = _wine_run(shuffle=True)
    assert max(history["val_accuracy"]) < 0.5  # 3 classes: nothing learned
    findings = ranked(record)
    assert findings[0].kind == "label_noise" and findings[0].severity == "error", \
        shown(findings)
    assert "y_train" in findings[0].advice


def test_true_labels_on_the_same_small_dataset_get_no_warning():
    record, history = _wine_run(shuffle=False)
    assert max(history["val_accuracy"]) > 0.9
    assert ranked(record) == [], shown(ranked(record))
