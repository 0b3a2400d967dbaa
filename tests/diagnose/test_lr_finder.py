"""lr_range_test judges a learning rate from the losses a callable returns."""
import math

import pytest
import torch

from bigtrain.diagnose import lr_range_test

LRS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def quadratic_step_fn(steps: int = 5):
    """Gradient descent on f(w) = 5 w^2 from w=1: diverges for lr > 0.2, crawls for tiny lr."""
    def step_fn(lr):
        w = torch.tensor(1.0, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = 5 * w ** 2
            loss.backward()
            opt.step()
        return float(5 * w.detach() ** 2)
    return step_fn


def test_good_lr_gives_no_finding():
    assert lr_range_test(quadratic_step_fn(), LRS, current_lr=0.1) is None


def test_too_high_lr():
    f = lr_range_test(quadratic_step_fn(), LRS, current_lr=1.0)
    assert f.kind == "lr_too_high" and "diverged" in f.evidence and "1e-01" in f.advice


def test_too_low_lr():
    f = lr_range_test(quadratic_step_fn(), LRS, current_lr=1e-4)
    assert f.kind == "lr_too_low" and "1e-01" in f.advice


def test_no_current_lr_reports_the_best():
    f = lr_range_test(quadratic_step_fn(), LRS)
    assert f.kind == "lr_range" and f.severity == "info" and "1e-01" in f.advice


def test_nothing_helps():
    f = lr_range_test(lambda lr: math.nan if lr else 1.0, LRS, current_lr=1e-2)
    assert f.kind == "lr_range" and f.severity == "error"
    with pytest.raises(ValueError, match="lrs"):
        lr_range_test(lambda lr: 0.0, [])
