"""Dead ReLUs on a real run (hidden biases start at -4: no unit fires from the first step):
the dead units are the first finding, the vanishing gradients they cause do not outrank
them, and no advice recommends ReLU (the problem) or a higher learning rate."""
from bigtrain.optimizers import Adam
from tests.diagnose.real_runs import digits_run, ranked


def test_dead_relus_come_first_and_no_advice_recommends_the_problem():
    record, history = digits_run(Adam(learning_rate=1e-3), hidden=(64, 64), bias=-4.0,
                                 epochs=4)
    assert max(history["accuracy"]) < 0.2  # nothing trains: every hidden unit is dead
    findings = ranked(record)
    kinds = [f.kind for f in findings]
    assert kinds[0] == "dead_units", kinds
    assert "initial" in findings[0].evidence and "bias_initializer" in findings[0].advice
    for f in findings:
        assert "activation='relu'" not in f.advice, (f.kind, f.advice)
        assert "raise the learning rate" not in f.advice.lower(), (f.kind, f.advice)
