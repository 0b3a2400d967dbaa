"""The run record's figures are measured, for every strategy: the gradient bytes a rank
held during a step (not the zeros left after zero_grad), the first step's saved-activation
peak, the resident set size, and an MFU against one peak shared by the ranks.

Hand figures: an MLP D -> H -> H -> 1 (ReLU) with an MSE loss on a local batch of B
samples saves its input and both ReLU outputs for backward, B * (D + 2H) float32 values;
the loss adds its prediction and target (2B values), within ACT_TOLERANCE. Its forward
pass is 2 (D H + H H + H) FLOPs per sample (matmuls; FLOP counters leave bias adds out).
"""
import numpy as np
import pytest
import torch
from torch import nn

from bigtrain import layers as L
from bigtrain.diagnose import RunRecord, render_report
from bigtrain.diagnose.step_memory import StepMemory, process_rss
from bigtrain.models import Sequential
from tests.dist import run_ranks

D, H, BATCH, STEPS = 16, 64, 32, 4
ACT_TOLERANCE = 0.03  # the loss's own saved tensors, relative to the hand figure
FLOPS_PER_SAMPLE = 2 * (D * H + H * H + H)
RNG = np.random.default_rng(0)
X = RNG.standard_normal((BATCH * STEPS, D)).astype(np.float32)
Y = RNG.standard_normal((BATCH * STEPS, 1)).astype(np.float32)


def _hand_activations(local_batch: int, hidden=(H, H)) -> int:
    """Input and ReLU outputs saved for backward, bytes (`hidden`: this rank's units)."""
    return local_batch * (D + sum(hidden)) * 4


def _model():
    m = Sequential([L.Input((D,)), L.Dense(H, activation="relu"),
                    L.Dense(H, activation="relu"), L.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    return m


def test_step_memory_counts_an_mlps_saved_activations_and_gradients():
    net = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(),
                        nn.Linear(H, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    mem = StepMemory()
    mem.open()
    nn.functional.mse_loss(net(torch.randn(BATCH, D)), torch.randn(BATCH, 1)).backward()
    opt.step()
    mem.close()
    hand = _hand_activations(BATCH)
    assert hand <= mem.activations_peak <= hand * (1 + ACT_TOLERANCE)
    assert mem.grads == sum(p.numel() * p.element_size() for p in net.parameters())
    # closed: a later pass is not counted
    net(torch.randn(4 * BATCH, D)).sum().backward()
    assert mem.activations_peak <= hand * (1 + ACT_TOLERANCE)


def _fit_rank(rank, world, strategy, run_dir):
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.loop import run_rank
    from bigtrain.engine.task import FitConfig
    from bigtrain.parallel import resolve_strategy
    from bigtrain.parallel.base import DistEnv
    from bigtrain.engine import record
    from bigtrain.plan import device
    device.measure_peak_flops = lambda seconds=0.3, n=512: 1e9 * (rank + 1)  # per rank
    record.data_profile = lambda task, strategy: {}  # the doctor's, not under test here
    model = _model()
    config = FitConfig(epochs=1, batch_size=BATCH, verbose=0, shuffle=False)
    task = make_task(model, prepare_data(model, X, Y), None, config, [], run_dir=run_dir)
    env = DistEnv(rank=rank, world_size=world, local_world_size=world)
    run_rank(task, resolve_strategy(strategy), model, env)
    local_grads = sum(  # every trainable parameter's gradient, its local part
        (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
        for p in task.module.parameters() if p.requires_grad)
    return local_grads, process_rss()


def _check_record(run_dir, local_grads, rss_now, hand, world):
    rec = RunRecord.load(run_dir)
    for rank in range(world):
        mem = rec.memory[rank]
        assert mem.grads == local_grads[rank] > 0
        assert hand <= mem.activations_peak <= hand * (1 + ACT_TOLERANCE)
        assert 0.5 < mem.rss / rss_now[rank] < 2.0
    assert rec.extra["memory_note"].startswith("gradients: read at the first optimizer step")
    text = render_report(run_dir).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 0 |")]
    assert rows and "n/a" not in rows[0]
    return rec


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["ddp", "zero3", "tensor"])
def test_two_rank_record_has_measured_memory_and_mfu(tmp_path, strategy):
    results = run_ranks(_fit_rank, 2, strategy, str(tmp_path), timeout=90)
    grads, rss = zip(*results)
    # data parallel: half the batch each; tensor parallel: the whole batch, the first
    # (column-split) layer's half of the units, the second's (row-split) summed output
    hand = _hand_activations(BATCH, (H // 2, H)) if strategy == "tensor" else \
        _hand_activations(BATCH // 2)
    rec = _check_record(tmp_path, grads, rss, hand, 2)
    assert rec.peak_flops == pytest.approx(2 * 2e9)  # the fastest rank's, times the ranks
    assert rec.mfu == pytest.approx(3 * FLOPS_PER_SAMPLE * rec.samples_per_s / rec.peak_flops)


def test_single_process_record_has_measured_memory(tmp_path, monkeypatch):
    from bigtrain.engine import record
    monkeypatch.setattr(record, "data_profile", lambda task, strategy: {})
    model = _model()
    model.fit(X, Y, epochs=1, batch_size=BATCH, shuffle=False, verbose=0, run_dir=tmp_path)
    net = model.net
    grads = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    rec = _check_record(tmp_path, [grads], [process_rss()], _hand_activations(BATCH), 1)
    assert rec.mfu == pytest.approx(3 * FLOPS_PER_SAMPLE * rec.samples_per_s / rec.peak_flops)


def test_short_epochs_write_the_record_once_then_at_the_end(tmp_path, monkeypatch):
    """A record write costs milliseconds; epochs shorter than the write interval skip it
    after the first, and the end of the fit writes the whole record."""
    from bigtrain.engine import record, run_profile
    monkeypatch.setattr(run_profile, "EPOCH_RECORD_EVERY_S", 3600.0)
    monkeypatch.setattr(record, "data_profile", lambda task, strategy: {})
    saved = []
    save = RunRecord.save
    monkeypatch.setattr(RunRecord, "save", lambda self, d: saved.append(self.epochs)
                        or save(self, d))
    _model().fit(X, Y, epochs=4, batch_size=BATCH, verbose=0, run_dir=tmp_path)
    assert saved == [1, 4]  # the first epoch's (replacing any older fit's), the final one
    assert len(RunRecord.load(tmp_path).history["loss"]) == 4
