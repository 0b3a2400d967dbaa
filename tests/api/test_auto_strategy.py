"""strategy="auto" on several devices: the planner picks a registered strategy, fit says
which, and the ranks train exactly like one process."""
import numpy as np

from bigtrain.parallel.base import strategy_names
from bigtrain.plan import plan
from tests.api.conftest import seed_like_model, teacher_data

TOL = 1e-5


def test_auto_on_two_devices_picks_the_planners_choice_and_matches_one_process(capsys):
    x, y, _ = teacher_data(n=256)
    single, auto = seed_like_model(), seed_like_model()
    auto.set_weights(single.get_weights())
    initial = [w.copy() for w in single.get_weights()]
    single.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    capsys.readouterr()
    hist = auto.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, strategy="auto",
                    devices=2)
    out = capsys.readouterr().out
    expected = next(e for e in plan(auto.net, devices=2, batch_size=32, optimizer="adam")
                    .estimates if e.fits and e.strategy in strategy_names())
    assert expected.strategy not in ("single", "auto")
    assert f"strategy='auto' chose {expected.strategy!r}" in out, out
    assert np.isfinite(hist.history["loss"]).all() and len(hist.history["loss"]) == 2
    diff = max(float(np.abs(a - b).max()) for a, b in zip(single.get_weights(),
                                                          auto.get_weights()))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(initial, single.get_weights()))
    assert diff <= TOL, (expected.strategy, diff)
    assert moved > 100 * TOL  # the check can tell one step apart
