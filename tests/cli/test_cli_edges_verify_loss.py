"""`bigtrain verify` compares the mean loss relative to its magnitude: a correct strategy on
data whose loss is large (hundreds) differs from one process by float32 rounding only, which
is more than a fixed 1e-5, and must pass; parameters keep the absolute tolerance."""
import textwrap

import numpy as np
import pytest

from bigtrain.cli.main import main
from bigtrain.cli.verify import capture_script, task_factory
from bigtrain.engine.loop import FitResult
from bigtrain.launch import launcher
from bigtrain.launch.verify import FAIL, PASS, check_strategy, run_single

SCRIPT = textwrap.dedent("""
    import numpy as np
    import bigtrain
    from bigtrain.layers import Dense, Input
    from bigtrain.models import Sequential
    bigtrain.set_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(256, 20)) * 1000).astype("float32")  # large inputs: loss ~ 1e2..1e3
    y = (x[:, :3].sum(1) > 0).astype("int64")
    m = Sequential([Input((20,)), Dense(32, activation="relu"), Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(x, y, epochs=2, batch_size=32, verbose=0)
""")
TOL = 1e-5


@pytest.fixture
def reference(tmp_path):
    script = tmp_path / "large_loss.py"
    script.write_text(SCRIPT)
    fit = capture_script(str(script), [])
    make = task_factory(fit, steps=5)
    return make, fit.model, run_single(make, fit.model)


def _launched(monkeypatch, reference, loss, param_shift=0.0):
    """Make the launched strategy run return `reference`'s weights (first tensor shifted by
    `param_shift`) and mean loss `loss`."""
    state = {k: v.clone() for k, v in reference.state_dict.items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] += param_shift
    result = FitResult(history={"loss": [loss]}, state_dict=state)
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: result)


def _ulps_away(value: float, n: int) -> float:
    """`value` moved by n float32 steps: what summing the same losses in another order gives."""
    return float(np.float32(value) + n * np.spacing(np.float32(value)))


def test_float32_rounding_of_a_large_loss_passes(reference, monkeypatch):
    make, owner, ref = reference
    loss = ref.history["loss"][-1]
    assert abs(loss) > 100  # the case: a fixed 1e-5 is below float32 resolution here
    _launched(monkeypatch, ref, _ulps_away(loss, 2))
    row = check_strategy("ddp", make, owner, 2, TOL, ref)
    assert row.loss_diff > TOL and row.status == PASS, row


@pytest.mark.parametrize("loss_factor, param_shift", [(1 + 1e-3, 0.0), (1.0, 3 * TOL)])
def test_a_real_difference_still_fails(reference, monkeypatch, loss_factor, param_shift):
    make, owner, ref = reference
    _launched(monkeypatch, ref, ref.history["loss"][-1] * loss_factor, param_shift)
    row = check_strategy("ddp", make, owner, 2, TOL, ref)
    assert row.status == FAIL, row


def test_help_says_the_loss_is_compared_relatively(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(1 + |loss|)" in out and "relative" in out
