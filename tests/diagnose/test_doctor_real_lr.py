"""The doctor on real runs with a learning rate far too high (Adam at 0.1, SGD at 5 on the
digits): lr_too_high comes first, its suggested rate trains well when used, and no finding
advises raising the rate. Healthy rates (Adam 1e-3, SGD 0.01 and 0.1) get no lr_too_high."""
import re

import pytest

from bigtrain.optimizers import SGD, Adam
from tests.diagnose.real_runs import digits_run, ranked


def _suggested(advice: str) -> float:
    return float(re.search(r"learning_rate=([0-9.e-]+)\)", advice).group(1))


@pytest.mark.parametrize("make", [lambda lr: Adam(learning_rate=lr),
                                  lambda lr: SGD(learning_rate=lr)], ids=["adam", "sgd"])
def test_a_far_too_high_rate_is_named_first_and_its_fix_trains(make):
    bad_lr = {Adam: 0.1, SGD: 5.0}[type(make(1.0))]
    record, history = digits_run(make(bad_lr))
    findings = ranked(record)
    assert findings[0].kind == "lr_too_high", [(f.kind, f.evidence) for f in findings]
    for f in findings:
        assert "raise the learning rate" not in f.advice.lower(), (f.kind, f.advice)
    new = _suggested(findings[0].advice)
    assert new < bad_lr / 10
    _, fixed = digits_run(make(new))
    # at the suggested rate the training loss falls every epoch (at the bad one it does not)
    # and the model reaches a healthy accuracy
    falls = lambda loss: all(b < a for a, b in zip(loss, loss[1:]))  # noqa: E731
    assert falls(fixed["loss"]) and not falls(history["loss"]), (fixed["loss"], history["loss"])
    assert max(fixed["val_accuracy"]) > 0.9


@pytest.mark.parametrize("optimizer", [lambda: Adam(learning_rate=1e-3),
                                       lambda: SGD(learning_rate=0.01),
                                       lambda: SGD(learning_rate=0.1)],
                         ids=["adam_1e-3", "sgd_0.01", "sgd_0.1"])
def test_healthy_rates_are_not_called_too_high(optimizer):
    record, history = digits_run(optimizer())
    assert max(history["val_accuracy"]) > 0.75  # it learns: a healthy run
    kinds = [f.kind for f in ranked(record)]
    assert "lr_too_high" not in kinds and "lr_too_low" not in kinds, kinds
