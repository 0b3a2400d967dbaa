"""A bad initialisation against a learning rate that is too high, on real runs (digits, wine).

Both give huge gradients and a huge loss; what tells them apart is the start. Initial weights
8x Keras's Glorot init make the first epoch's loss hundreds of times a no-skill model's
before any update could do harm, at any learning rate; the doctor must name the init first
(not the rate, not clipping), and the same network at the standard init must train. A rate
far too high on a standard init is lr_too_high, never bad_init.
"""
import math

import pytest
import torch
from torch import nn

from bigtrain.diagnose.grad_health import GradHealth
from bigtrain.optimizers import SGD, Adam
from tests.diagnose.adversary_runs import fit_run, mlp, scale_kernels, shown, sklearn_data
from tests.diagnose.real_runs import ranked

OPTIMIZERS = {"adam": lambda lr: Adam(learning_rate=lr), "sgd": lambda lr: SGD(learning_rate=lr)}
GOOD_LR = {"adam": 1e-3, "sgd": 0.05}


def _digits_run(opt: str, lr: float, factor: float | None):
    return fit_run(mlp(64, (64, 64, 64), 10), sklearn_data("digits"), OPTIMIZERS[opt](lr),
                   mutate=None if factor is None else scale_kernels(factor))


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_a_bad_init_is_named_first_at_a_healthy_and_at_a_lower_rate(opt):
    for lr in (GOOD_LR[opt], GOOD_LR[opt] / 10):  # a lower rate does not make it go away
        record, history = _digits_run(opt, lr, 8.0)
        assert history["loss"][0] > 50 * math.log(10)  # far above ln(10): a no-skill model's
        findings = ranked(record)
        assert findings[0].kind == "bad_init", (lr, shown(findings))
        assert "kernel_initializer" in findings[0].advice
        for f in findings[1:]:  # its symptoms point back at it instead of at the rate
            if f.kind in ("lr_too_high", "exploding_gradients", "divergence"):
                assert f.advice.startswith("fix bad_init"), (f.kind, f.advice)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_the_same_network_at_the_standard_init_trains_and_gets_no_bad_init(opt):
    record, history = _digits_run(opt, GOOD_LR[opt], None)
    assert max(history["val_accuracy"]) > 0.9
    assert "bad_init" not in [f.kind for f in ranked(record)]


def test_a_rate_far_too_high_on_a_standard_init_is_not_called_bad_init():
    record, history = fit_run(mlp(13, (64, 64), 3), sklearn_data("wine"),
                              Adam(learning_rate=0.5), epochs=10)
    findings = ranked(record)
    assert findings[0].kind == "lr_too_high", shown(findings)
    assert "bad_init" not in [f.kind for f in findings]


def test_a_wide_random_normal_init_on_wine_is_named_not_clipping():
    from bigtrain.initializers import RandomNormal
    record, _ = fit_run(mlp(13, (64, 64), 3, kernel_initializer=RandomNormal(stddev=5.0)),
                        sklearn_data("wine"), Adam(learning_rate=1e-3), epochs=10)
    findings = ranked(record)
    assert findings[0].kind == "bad_init", shown(findings)


def test_start_rows_measure_the_init_scale_whatever_the_layer_size():
    """He init (variance 2 / fan_in) gives unit weight vectors of norm sqrt(2) on average."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(300, 64), nn.ReLU(), nn.Linear(64, 10))
    for m in (net[0], net[2]):
        nn.init.kaiming_normal_(m.weight)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    health = GradHealth(net, every=1)
    health.attach(opt)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(8, 300)), torch.randint(0, 10, (8,))).backward()
        opt.step()
    rows = health.summary()["start_rows"]
    assert rows["0"] == pytest.approx(math.sqrt(2), rel=0.05)
    assert rows["2"] == pytest.approx(math.sqrt(2), rel=0.2)  # 10 units: a noisier mean
