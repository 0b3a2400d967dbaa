"""Gradient health (GradHealth on the optimizer's step hooks), the data profile and the
findings built on them, checked on hand-made tensors and data with known answers."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from bigtrain.diagnose import RunRecord, check_run
from bigtrain.diagnose.baseline_checks import check_profile
from bigtrain.diagnose.findings import Finding, sort_findings
from bigtrain.diagnose.grad_health import GradHealth, check_gradients, layer_name
from bigtrain.diagnose.profile import profile_data


def _steps(net, opt, health, n, x, y):
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    health.detach()
    return health.summary()


def test_sgd_update_norm_is_lr_times_gradient_norm_on_sampled_steps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    health = GradHealth(net, every=3)
    assert health.attach(opt)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    s = _steps(net, opt, health, 7, x, y)
    assert s["steps"] == [0, 3, 6] and s["lr"] == [0.1] * 3
    assert list(s["layers"]) == ["0", "2"]
    for layer in s["layers"].values():
        assert layer["update"] == pytest.approx([0.1 * g for g in layer["grad"]], rel=1e-5)
    assert check_gradients(s) == []  # ratios near 1e-2..1e-3: healthy


def test_dead_units_and_a_huge_step_size_are_findings():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # no unit ever fires
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    health = GradHealth(net, every=1)
    health.attach(opt)
    s = _steps(net, opt, health, 5, torch.randn(16, 4), torch.randint(0, 2, (16,)))
    assert s["layers"]["0"]["dead_units"] == 1.0
    assert [f.kind for f in check_gradients(s)] == ["dead_units"]
    huge = {**s, "layers": {"0": {"grad": [1.0] * 3, "weight": [1.0] * 3, "update": [5.0] * 3,
                                  "dead_units": 0.0}}}
    assert [f.kind for f in check_gradients(huge)] == ["lr_too_high"]


def test_layer_names_drop_wrappers():
    assert layer_name("module.layers.dense_1.linear") == "dense_1"
    assert layer_name("_orig_mod.blocks.0.attn") == "blocks.0.attn"


def _blobs(n=600, seed=0, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x * scale + shift, y


def test_profile_baselines_and_uniformly_unscaled_features():
    x, y = _blobs()
    xv, yv = _blobs(seed=1)
    p = profile_data(x, y, xv, yv, loss="sparse_categorical_crossentropy")
    assert p["linear"]["metric"] == "accuracy" and p["linear"]["val"] > 0.9
    assert abs(p["val_majority_share"] - max(np.mean(yv), 1 - np.mean(yv))) < 0.05
    assert check_profile(p, {"val_accuracy": [0.95]}) == []
    low = [f.kind for f in check_profile(p, {"val_accuracy": [0.40]})]
    assert low == ["below_majority", "below_baseline"]
    raw = profile_data(x * 1000 + 500, y, xv * 1000 + 500, yv)
    assert [f.kind for f in check_profile(raw, {})] == ["unscaled_features"]


def test_cleanlab_finds_flipped_labels_and_names_rows():
    x, y = _blobs()
    noisy = y.copy()
    flip = np.random.default_rng(2).choice(len(y), 120, replace=False)
    noisy[flip] = 1 - noisy[flip]
    p = profile_data(x, noisy)
    issues = p["label_issues"]
    assert 0.12 < issues["share"] < 0.3 and issues["split"] == "train"
    assert len(set(issues["worst"]) & set(flip.tolist())) >= 8  # the worst are real flips
    assert [f.kind for f in check_profile(p, {})] == ["label_noise"]
    assert profile_data(x, y)["label_issues"]["share"] < 0.05


def _hard_task(n, seed, noise=4.0):
    """Clean labels that the features cannot separate well: y follows x0 + x1 plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] + noise * rng.standard_normal(n) > 0).astype(np.int64)


def test_label_flags_of_a_weak_judge_are_info_not_a_warning():
    """On a hard task with clean labels, confident learning flags about the rows its judge
    gets wrong; with the judge right on under 70 % of rows the finding says so, as info."""
    x, y = _hard_task(600, 0)
    xv, yv = _hard_task(300, 1)
    p = profile_data(x, y, xv, yv)
    assert p["label_issues"]["share"] > 0.2 and p["label_issues"]["accuracy_of_probs"] < 0.7
    found = check_profile(p, {})
    assert [(f.kind, f.severity) for f in found] == [("label_noise", "info")]
    assert "right on only" in found[0].evidence


def test_noisy_training_labels_warn_even_with_a_weak_judge():
    """35 % of the training labels flipped, validation labels clean: the linear model scores
    far better on validation than on the labels it learned from, so the flags are noise."""
    x, y = _blobs()
    xv, yv = _blobs(seed=1)
    noisy = y.copy()
    flip = np.random.default_rng(3).random(len(y)) < 0.35
    noisy[flip] = 1 - noisy[flip]
    p = profile_data(x, noisy, xv, yv)
    assert p["label_issues"]["accuracy_of_probs"] < 0.7
    assert [(f.kind, f.severity) for f in check_profile(p, {})] == [("label_noise", "warning")]


def test_the_label_check_forks_no_process_pool(monkeypatch):
    """It runs at the end of a fit, inside a process with torch, gloo and data-loading
    threads: a forked Pool there can hang for ever (it did, in the doctor's scenario suite
    after the data-loading tests), so cleanlab runs in this process."""
    import multiprocessing

    def no_pool(*args, **kwargs):
        raise AssertionError("the label check forked a multiprocessing Pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    x, y = _blobs()
    noisy = y.copy()
    noisy[:60] = 1 - noisy[:60]
    assert profile_data(x, noisy)["label_issues"]["share"] > 0.05


def test_findings_rank_by_impact_with_info_last():
    a = Finding("a", "info", "e", "x=1", 0.99)
    b = Finding("b", "warning", "e", "x=1", 0.3)
    c = Finding("c", "error", "e", "x=1", 0.5)
    assert [f.kind for f in sort_findings([a, b, c])] == ["c", "b", "a"]


def test_doctor_json(tmp_path, capsys):
    from bigtrain.cli.main import main
    rec = RunRecord(strategy="ddp", world_size=2, threads_per_rank=8, optimizer="adam",
                    precision="32", batch_size=64, cpu_cores=4, local_world_size=2)
    rec.save(tmp_path)
    assert main(["doctor", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["kind"] == "thread_oversubscription" and out[0]["impact"] == 0.75
    assert set(out[0]) == {"kind", "severity", "evidence", "advice", "impact"}
    assert check_run(RunRecord.load(tmp_path))[0].kind == "thread_oversubscription"
