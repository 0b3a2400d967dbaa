"""Training labels shuffled apart from their rows (digits): the doctor's first finding is an
error naming the labels; the same run on the true labels gets no label finding."""
import numpy as np

from bigtrain.optimizers import Adam
from tests.diagnose.real_runs import digits, digits_run, ranked


def test_shuffled_labels_are_an_error_naming_the_labels():
    y = np.random.default_rng(1).permutation(digits()[1])
    record, history = digits_run(Adam(learning_rate=1e-3), y=y)
    assert max(history["val_accuracy"]) < 0.2  # nothing to learn: about chance (0.1)
    findings = ranked(record)
    assert findings, "a run on shuffled labels must get a warning"
    first = findings[0]
    assert first.severity == "error" and "label" in first.kind, (first.kind, first.evidence)
    assert "y_train" in first.advice


def test_true_labels_get_no_label_finding():
    record, history = digits_run(Adam(learning_rate=1e-3))
    assert max(history["val_accuracy"]) > 0.9
    assert not [f.kind for f in ranked(record) if "label" in f.kind]
