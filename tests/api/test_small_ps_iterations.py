"""`model.optimizer.iterations` after and during a parameter-server fit: the workers count
their steps (under "bsp", the synchronous steps the servers apply), so it reads what a
one-process fit reads, and the next fit goes on counting."""
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("keras")
from tests.api.test_backlog_iterations import FIT, X, Y, _ranked, _Steps  # noqa: E402


def test_a_parameter_server_fit_counts_its_steps_and_the_next_fit_goes_on():
    model, steps = _ranked(), _Steps()
    model.fit(X, Y, strategy="ps", devices=3, timeout=60, callbacks=[steps], **FIT)
    assert steps.seen == [1, 2, 3, 4, 5, 6]  # rank 0's callback, read back here
    assert int(model.optimizer.iterations) == 6
    model.fit(X, Y, **FIT)
    assert int(model.optimizer.iterations) == 12
