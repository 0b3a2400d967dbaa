"""strategy="auto" with every optimizer compile takes: the planner's table lacked Ftrl and
Lamb, and any torch optimizer class (Rprop, ASGD), so such a fit stopped with "unknown
optimizer" before choosing; the table names them now, and any other optimizer's state is
measured on a probe."""
from unittest import mock

import numpy as np
import pytest
import torch

from bigtrain.launch import launcher
from bigtrain.layers import Dense, Input
from bigtrain.models import Model


class _Launched(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["ftrl", "lamb", torch.optim.Rprop, torch.optim.ASGD])
def test_auto_chooses_a_strategy_for_every_optimizer(optimizer, capsys):
    inp = Input(shape=(4,))
    model = Model(inp, Dense(2)(inp))
    model.compile(optimizer=optimizer, loss="mse")

    def stub(*args, **kwargs):
        raise _Launched

    with mock.patch.object(launcher, "launch", stub), pytest.raises(_Launched):
        model.fit(np.zeros((8, 4), np.float32), np.zeros((8, 2), np.float32),
                  strategy="auto", devices=2, verbose=0)
    assert "strategy='auto' chose" in capsys.readouterr().out


def test_state_bytes_are_measured_per_element():
    from bigtrain.plan.memory import measured_state_bytes
    assert measured_state_bytes(lambda ps: torch.optim.Rprop(ps)) == 8  # prev, step_size
    assert measured_state_bytes(lambda ps: torch.optim.SGD(ps, lr=0.1)) == 0
    assert measured_state_bytes(lambda ps: torch.optim.Adam(ps)) == 8  # exp_avg, exp_avg_sq
