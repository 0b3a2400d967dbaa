"""A loss that does not fit the labels or the output, on the digits.

Softmax output + from_logits=True: the loss applies a second softmax, the model still ranks
the classes but its loss is stuck above log(e + 9) - 1 = 1.46; the doctor must say so (it
said nothing), and must not say it for the same network trained correctly (softmax without
from_logits, or logits with from_logits). categorical_crossentropy on integer labels is
refused before training; binary_crossentropy on ten one-hot classes is a wrong_loss.
"""
import math

import numpy as np
import pytest

from bigtrain import losses
from bigtrain.optimizers import Adam
from tests.diagnose.adversary_runs import fit_run, mlp, shown, sklearn_data
from tests.diagnose.real_runs import ranked


def _digits(loss, out_activation="softmax", data=None):
    return fit_run(mlp(64, (64,), 10, out_activation=out_activation),
                   data or sklearn_data("digits"), Adam(learning_rate=1e-3), loss=loss)


def test_softmax_output_with_from_logits_is_a_wrong_loss():
    record, history = _digits(losses.SparseCategoricalCrossentropy(from_logits=True))
    floor = math.log(math.e + 9) - 1
    assert min(history["loss"]) > floor  # the double softmax's floor, whatever the accuracy
    findings = ranked(record)
    assert findings[0].kind == "wrong_loss", shown(findings)
    assert "from_logits" in findings[0].evidence and "from_logits" in findings[0].advice
    assert f"{floor:.3g}" in findings[0].evidence


def test_softmax_output_with_from_logits_is_a_wrong_loss_on_two_ranks():
    """A fit on several ranks gets its data profile from the process that called fit; that
    profile never looked at the output, so the double softmax went unreported."""
    import tempfile

    from bigtrain.diagnose import RunRecord
    from bigtrain.models import Sequential
    x, y, xv, yv = sklearn_data("digits")
    model = Sequential(mlp(64, (32,), 10))
    model.compile(optimizer=Adam(learning_rate=1e-3),
                  loss=losses.SparseCategoricalCrossentropy(from_logits=True))
    with tempfile.TemporaryDirectory() as run_dir:
        model.fit(x, y, validation_data=(xv, yv), epochs=1, batch_size=64, verbose=0,
                  run_dir=run_dir, strategy="ddp", devices=2)
        record = RunRecord.load(run_dir)
    assert record.world_size == 2
    findings = ranked(record)
    assert findings[0].kind == "wrong_loss", shown(findings)


@pytest.mark.parametrize("loss, out_activation", [
    ("sparse_categorical_crossentropy", "softmax"),
    (losses.SparseCategoricalCrossentropy(from_logits=True), None)],
    ids=["softmax", "logits"])
def test_the_same_network_trained_correctly_gets_no_wrong_loss(loss, out_activation):
    record, history = _digits(loss, out_activation)
    assert min(history["loss"]) < 0.5 and max(history["val_accuracy"]) > 0.9
    assert "wrong_loss" not in [f.kind for f in ranked(record)]


def test_categorical_crossentropy_on_integer_labels_is_refused_before_training():
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        _digits("categorical_crossentropy")


def test_binary_crossentropy_on_ten_one_hot_classes_is_a_wrong_loss():
    x, y, xv, yv = sklearn_data("digits")
    eye = np.eye(10, dtype=np.float32)
    record, _ = _digits("binary_crossentropy", data=(x, eye[y], xv, eye[yv]))
    findings = ranked(record)
    assert findings[0].kind == "wrong_loss", shown(findings)
