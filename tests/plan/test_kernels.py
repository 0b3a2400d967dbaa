"""The planner's kernel-level step time: the traced calls of a step, the probe's per-call
cache and estimates, and how plan() turns a probe's seconds into each strategy's compute
and update. Timers are stand-ins (a table, a roofline): the model is tested, not the host."""
import pytest
import torch
from torch import nn

from bigtrain.plan import DeviceSpec, measure_cpu_device, plan
from bigtrain.plan import kernels
from bigtrain.plan.cost import traced_compute, update_bytes
from bigtrain.plan.kernels import KernelProbe
from bigtrain.plan.memory import PRECISIONS
from bigtrain.plan.optrace import trace_step
from tests.plan.models import TinyGPT, mlp

PEAK, STREAM = 1e11, 1e10


def _matmuls(calls):
    """(op name, operand shapes) of the matrix products among `calls`."""
    return [(c.name.split(".")[1], [a.shape for a in c.args if hasattr(a, "shape")])
            for c in calls if c.name.split(".")[1] in ("mm", "addmm")]


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(kernels, "_TIMED", {})
    monkeypatch.setattr(kernels, "_DECLINED", set())


def test_trace_lists_forward_and_backward_matmuls_at_the_batch():
    calls = trace_step(nn.Linear(16, 4), (torch.zeros(1, 16),), batch=32)
    mms = _matmuls(calls)
    # forward x W^T (32 x 16 by 16 x 4) and the skinny weight gradient (4 x 32) by
    # (32 x 16), the batch as its inner dimension; no input gradient: the input needs none
    assert mms == [("addmm", [(4,), (32, 16), (16, 4)]), ("mm", [(4, 32), (32, 16)])]
    assert sum(c.flops for c in calls) == 2 * (2 * 32 * 16 * 4)
    assert all(c.nbytes == 0 for c in calls if c.func.is_view)  # a view moves no data
    assert not any(c.name.startswith("prim.") for c in calls)


def test_trace_leaves_the_module_alone_and_refuses_what_fake_tensors_cannot_run():
    model = mlp(8, 6, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert trace_step(model, (torch.zeros(1, 8),), batch=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())

    class DataDependent(nn.Linear):
        def forward(self, x):
            return super().forward(x) * float(x.sum().item())  # a value, not a shape
    assert trace_step(DataDependent(4, 2), (torch.zeros(1, 4),), batch=2) is None


def test_probe_times_each_distinct_call_once_per_process():
    seen = []

    def timer(call):
        seen.append(call.key)
        return 1e-6
    probe = KernelProbe(PEAK, STREAM)
    calls = trace_step(mlp(8, 8, 8), (torch.zeros(1, 8),), batch=4)
    first = probe.calls_seconds(calls, timer=timer)
    assert len(seen) == len({c.key for c in calls}) < len(calls)  # repeats not retimed
    assert probe.calls_seconds(calls, timer=timer) == first  # the cache answers
    assert len(seen) == len({c.key for c in calls})


def test_calls_not_timed_are_estimated_and_scaled_like_the_timed_ones(monkeypatch):
    probe = KernelProbe(PEAK, STREAM)
    calls = trace_step(nn.Linear(64, 64), (torch.zeros(1, 64),), batch=16)
    big = max(calls, key=lambda c: c.nbytes)
    monkeypatch.setattr(kernels, "REPLAY_MAX_BYTES", big.nbytes - 1)  # too big to time
    monkeypatch.setattr(kernels, "WORK_SECONDS", 0.0)  # every call counts as work
    total = probe.calls_seconds(calls, timer=lambda c: 2 * probe.estimate(c))
    # every timed call took twice its estimate: the untimed one is counted at twice too
    assert total == pytest.approx(2 * sum(probe.estimate(c) for c in calls))
    assert (torch.get_num_threads(), big.key) not in kernels._TIMED
    # calls below WORK_SECONDS (mostly dispatch) do not stretch the estimates
    monkeypatch.setattr(kernels, "_TIMED", {})
    monkeypatch.setattr(kernels, "WORK_SECONDS", 1.0)
    total = probe.calls_seconds(calls, timer=lambda c: 2 * probe.estimate(c))
    assert total == pytest.approx(2 * sum(probe.estimate(c) for c in calls)
                                  - probe.estimate(big))


def test_a_call_that_will_not_run_is_tried_once(monkeypatch):
    tried = []
    probe = KernelProbe(PEAK, STREAM)
    calls = trace_step(mlp(8, 8, 8), (torch.zeros(1, 8),), batch=4)
    probe.calls_seconds(calls, timer=lambda c: tried.append(c.key))  # None: declined
    probe.calls_seconds(calls, timer=lambda c: tried.append(c.key))
    assert len(tried) == len({c.key for c in calls})


def test_far_inputs_add_their_bytes_at_stream_bandwidth(monkeypatch):
    monkeypatch.setattr(kernels, "l2_bytes", lambda: 1000)
    probe = KernelProbe(PEAK, STREAM)
    calls = [c for c in trace_step(nn.Linear(64, 64), (torch.zeros(1, 64),), batch=8)
             if c.name == "aten.addmm.default"]
    # the addmm reads its 64 x 64 weight (16 kB > the 1 kB "cache"): from memory in a step
    assert probe.calls_seconds(calls, timer=lambda c: 1e-6) == \
        pytest.approx(1e-6 + calls[0].in_bytes / STREAM)


def test_a_skinny_batch_costs_more_per_flop_than_a_wide_one(monkeypatch):
    """With a roofline timer, a layer at batch 2 is memory-bound (its weights streamed for
    little arithmetic): the plan gives it more seconds per FLOP than at batch 512, where
    one peak for every FLOP gave both the same."""
    monkeypatch.setattr(kernels, "time_call", lambda c: None)  # every call estimated
    monkeypatch.setattr(kernels, "adam_bandwidth", lambda threads, n: STREAM)
    spec = DeviceSpec("cpu", 1e10, PEAK, 1e9, memory_bandwidth=STREAM,
                      kernels=KernelProbe(PEAK, STREAM))
    model = mlp(1024, 1024, 1024)
    per_sample = [plan(model, devices=1, batch_size=b, device=spec).get("single")
                  .time.compute / b for b in (2, 512)]
    assert per_sample[0] > 3 * per_sample[1]


def test_plan_prices_each_strategy_from_the_probe(monkeypatch):
    per_sample = 1e-3
    monkeypatch.setattr(KernelProbe, "step_seconds",
                        lambda self, module, example, batch: per_sample * batch)
    monkeypatch.setattr(kernels, "adam_bandwidth", lambda threads, n: 5e9)
    probe = KernelProbe(peak_flops=4e10, stream_bandwidth=STREAM)
    spec = DeviceSpec("cpu", 1e10, 2e10, 1e9, memory_bandwidth=STREAM, latency=0.0,
                      kernels=probe)  # each rank gets half the probed host
    model = mlp(32, 64, 10)
    p = plan(model, devices=2, batch_size=64, device=spec, microbatches=1)
    assert p.get("ddp").time.compute == pytest.approx(per_sample * 32 * 2)
    n = sum(x.numel() for x in model.parameters())
    assert p.get("ddp").time.update == pytest.approx(
        update_bytes("ddp", n, PRECISIONS["32"], 8, world_size=2) / (5e9 / 2))
    assert any("kernel" in note for note in p.notes)
    bf16 = plan(model, devices=2, batch_size=64, device=spec, precision="bf16-mixed")
    assert any("fp32 kernels" in note for note in bf16.notes)  # FLOPs / FLOP/s there


def test_traced_compute_splits_the_work_per_strategy():
    seconds = lambda b: 0.001 * b  # noqa: E731
    assert traced_compute("single", seconds, world_size=1, batch_size=64,
                          microbatches=1) == pytest.approx(0.064)
    assert traced_compute("zero3", seconds, world_size=4, batch_size=64,
                          microbatches=2) == pytest.approx(2 * 0.008)
    # pipeline: every micro-batch of 8 through 1/4 of the calls
    assert traced_compute("pipeline", seconds, world_size=4, batch_size=64,
                          microbatches=8) == pytest.approx(8 * 0.008 / 4)
    assert traced_compute("ddp", lambda b: None, world_size=2, batch_size=8,
                          microbatches=1) is None


def test_time_call_runs_the_call_and_declines_what_it_cannot_run():
    calls = trace_step(TinyGPT(), (torch.zeros(1, 8, dtype=torch.long),), batch=2)
    mm = next(c for c in calls if c.name == "aten.mm.default")
    assert kernels.time_call(mm) > 0
    bad = mm.__class__(mm.func, mm.args[:1], (), 0.0, 0.0)  # a missing operand
    assert kernels.time_call(bad) is None


def test_measured_host_carries_a_probe_and_specs_check_it():
    spec = measure_cpu_device(ranks_per_host=2, n=64, copy_mb=1, repeats=1)
    assert isinstance(spec.kernels, KernelProbe)
    assert spec.kernels.peak_flops == pytest.approx(2 * spec.flops)  # a rank's half
    with pytest.raises(ValueError, match="KernelProbe"):
        DeviceSpec("cpu", 1, 1, 1, kernels=object())
    with pytest.raises(ValueError, match="peak_flops"):
        KernelProbe(0, 1)
