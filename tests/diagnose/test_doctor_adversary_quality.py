"""Poor models whose cause the doctor already names, checked on real digits (coverage: they
passed before): a "digit 8 or not" task, 10.5x imbalanced, where the model's 0.89 accuracy is
exactly always answering "not 8"; and 60 training rows under 512 units, where validation loss
turns up while training loss keeps falling."""
import numpy as np

from bigtrain.optimizers import SGD, Adam
from tests.diagnose.adversary_runs import fit_run, mlp, shown, sklearn_data
from tests.diagnose.real_runs import ranked


def test_an_accuracy_that_is_the_majority_share_is_class_imbalance():
    x, y, xv, yv = sklearn_data("digits")
    data = (x, (y == 8).astype(np.int64), xv, (yv == 8).astype(np.int64))
    record, history = fit_run(mlp(64, (16,), 2), data, SGD(learning_rate=0.01), epochs=4)
    majority = 1 - data[3].mean()
    assert abs(history["val_accuracy"][-1] - majority) < 0.01  # it answers "not 8" always
    findings = ranked(record)
    assert findings[0].kind == "class_imbalance", shown(findings)
    assert "class_weight" in findings[0].advice


def test_sixty_rows_under_a_wide_layer_overfit_and_the_stop_epoch_is_the_best_one():
    x, y, xv, yv = sklearn_data("digits")
    record, history = fit_run(mlp(64, (512,), 10), (x[:60], y[:60], xv, yv),
                              Adam(learning_rate=3e-3), epochs=60, batch_size=60)
    assert history["accuracy"][-1] == 1.0 and max(history["val_accuracy"]) < 0.85
    findings = ranked(record)
    assert findings[0].kind == "overfitting", shown(findings)
    best = int(np.argmin(history["val_loss"])) + 1
    assert f"stop at epoch {best}:" in findings[0].advice
