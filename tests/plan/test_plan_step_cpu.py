"""Step time of CPU ranks: gloo's collectives, buffer copies and updates on the rank's core.

On CPU ranks the planner prices each kind of collective at the speed measured between
ranks of the host (bigtrain.plan.collectives), FSDP2's per-unit cost, the buffer copies DDP
and FSDP2 make, the per-tensor Adam loop of optimizers over DTensors, and the pipeline's
heaviest stage. These tests check that structure, not timings.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bigtrain.plan import DeviceSpec, plan
from bigtrain.plan.collectives import CollectiveCosts, measure_collectives
from bigtrain.plan.cost import (UNFUSED_UPDATE, comm_parts, comm_seconds, host_copy_bytes,
                                step_time, training_flops)
from bigtrain.plan.device import step_rates
from bigtrain.plan.memory import PRECISIONS
from bigtrain.plan.profile import ModelProfile
from bigtrain.plan.stages import LayerFigures, stage_work_share

FP32 = PRECISIONS["32"]
COSTS = CollectiveCosts(all_reduce=1e9, all_gather=5e8, reduce_scatter=2.5e8, latency=1e-4,
                        unit_zero2=2e-3, unit_zero3=3e-3)
PROFILE = ModelProfile(n_params=1_000_000, n_units=5)


def _cpu(**kw) -> DeviceSpec:
    return DeviceSpec("cpu", 8e9, 1e11, 2e9, memory_bandwidth=1e10, latency=5e-5, **kw)


def test_each_collective_kind_at_its_measured_rate():
    """zero3: its gathers at the all-gather rate, its reduce-scatter at its own, and the
    measured seconds per FSDP2 unit instead of a latency per collective."""
    parts = comm_parts("zero3", PROFILE, FP32, world_size=2, batch_size=8)
    assert parts == {"all_gather": 4e6, "reduce_scatter": 2e6}  # 2 gathers of 4 MB, halved
    seconds = comm_seconds("zero3", PROFILE, FP32, world_size=2, batch_size=8, microbatches=1,
                           bandwidth=2e9, latency=5e-5, collectives=COSTS)
    assert seconds == pytest.approx(4e6 / 5e8 + 2e6 / 2.5e8 + 5 * 3e-3)
    ddp = comm_seconds("ddp", PROFILE, FP32, world_size=2, batch_size=8, microbatches=1,
                       bandwidth=2e9, latency=5e-5, collectives=COSTS)
    assert ddp == pytest.approx(4e6 / 1e9 + 1e-4)  # one bucket
    # without measured costs: every byte at the link's bandwidth, as before
    plain = comm_seconds("zero3", PROFILE, FP32, world_size=2, batch_size=8, microbatches=1,
                         bandwidth=2e9, latency=5e-5)
    assert plain == pytest.approx(6e6 / 2e9 + 15 * 5e-5)


def test_zero3_prices_its_copies_and_ddp_its_buckets():
    psi = PROFILE.n_params
    assert host_copy_bytes("zero3", PROFILE, FP32, world_size=2) == (2 * 4 + 4) * psi
    assert host_copy_bytes("zero2", PROFILE, FP32, world_size=2) == (4 + 4) * psi
    assert host_copy_bytes("ddp", PROFILE, FP32, world_size=2) == 2 * 4 * psi
    assert host_copy_bytes("ddp", PROFILE, FP32, world_size=1) == 0.0
    assert host_copy_bytes("pipeline", PROFILE, FP32, world_size=2) == 0.0
    t = step_time("zero3", PROFILE, FP32, world_size=2, batch_size=8, microbatches=1,
                  flops=1e11, bandwidth=2e9, host_bandwidth=2e9, offload_moves=False,
                  copy_bandwidth=1e10)
    assert t.copies == pytest.approx(2 * 12 * psi / 1e10)  # read + write of each byte
    assert t.total == pytest.approx(t.compute + t.comm + t.update + t.copies)


def test_cpu_rank_comm_is_not_overlapped_and_copies_only_on_cpu():
    """A CPU rank's plan adds its collectives and copies to its compute (its own core does
    them); an accelerator's buffer copies run on the device and are not priced."""
    cpu = step_rates(_cpu(collectives=COSTS), 1e6, probed=False)
    assert cpu["copy_bandwidth"] == 1e10 and cpu["collectives"] is COSTS
    gpu = step_rates(DeviceSpec.preset("a100-80gb"), 1e6, probed=False)
    assert gpu["copy_bandwidth"] is None and gpu["collectives"] is None
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    p = plan(model, devices=2, batch_size=8, device=_cpu(collectives=COSTS))
    for name in ("ddp", "zero1", "zero2", "zero3"):
        t = p.get(name).time
        assert t.copies > 0 and t.comm > 0
        assert t.total == pytest.approx(t.compute + t.comm + t.update + t.copies)
    assert any("own core" in n for n in p.notes)


def test_dtensor_optimizers_update_at_the_loop_rate():
    kwargs = dict(world_size=2, batch_size=8, microbatches=1, flops=1e11, bandwidth=2e9,
                  host_bandwidth=2e9, offload_moves=False, memory_bandwidth=1e10,
                  optimizer_bytes=8, unfused_bandwidth=2.5e9)
    for name in ("ddp", "zero1", "zero2", "zero3", "tensor"):
        t = step_time(name, PROFILE, FP32, **kwargs)
        rate = 2.5e9 if name in UNFUSED_UPDATE else 1e10
        share = 1.0 if name == "ddp" else 0.5
        assert t.update == pytest.approx(28 * PROFILE.n_params * share / rate), name


def test_step_rates_probe_the_loop_update():
    from bigtrain.plan.kernels import KernelProbe
    spec = _cpu(kernels=KernelProbe(peak_flops=1e11, stream_bandwidth=1e10))
    rates = step_rates(spec, 2 ** 20, probed=True)
    # the per-tensor loop reads and writes more per parameter than the fused kernel
    assert 0 < rates["unfused_bandwidth"] < rates["memory_bandwidth"]


def test_pipeline_runs_the_heaviest_stage_share():
    """A chain of one small and three big layers: the stage whose states the plan counts
    runs most of the work, and the step follows it, not half the model."""
    chain = (LayerFigures(10, 10, 1e3), LayerFigures(1000, 1000, 1e6),
             LayerFigures(1000, 1000, 1e6), LayerFigures(1000, 1000, 1e6))
    share = stage_work_share(chain, 2)
    assert share > 0.5
    assert stage_work_share(None, 2) == 0.5
    prof = ModelProfile(n_params=3010, forward_flops_per_sample=3.001e6, chain=chain)
    t = step_time("pipeline", prof, FP32, world_size=2, batch_size=8, microbatches=4,
                  flops=1e9, bandwidth=2e9, host_bandwidth=2e9, offload_moves=False)
    assert t.compute == pytest.approx(training_flops(prof, 8) * share / 1e9)
    # on a CPU rank, the stage adds 3 later micro-batches' gradients to its kept one
    cpu = step_time("pipeline", prof, FP32, world_size=2, batch_size=8, microbatches=4,
                    flops=1e9, bandwidth=2e9, host_bandwidth=2e9, offload_moves=False,
                    copy_bandwidth=1e10)
    assert cpu.copies == pytest.approx(3 * 3 * 4 * 3010 * share / 1e10)


def test_collective_costs_checked():
    with pytest.raises(ValueError, match="all_gather"):
        CollectiveCosts(all_reduce=1e9, all_gather=0, reduce_scatter=1e9, latency=0,
                        unit_zero2=0, unit_zero3=0)
    with pytest.raises(ValueError, match="collectives"):
        _cpu(collectives={"all_reduce": 1e9})
    with pytest.raises(ValueError, match="world_size"):
        measure_collectives(1)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_measure_collectives_on_two_ranks():
    """The probe runs on 2 gloo ranks of this host and gives positive rates; a measured
    host spec for 2 ranks carries them when asked."""
    from bigtrain.plan.device import measure_cpu_device
    spec = measure_cpu_device(2, n=128, copy_mb=8, repeats=1, collectives=True)
    costs = spec.collectives
    assert isinstance(costs, CollectiveCosts)
    assert costs.all_reduce > 0 and costs.all_gather > 0 and costs.reduce_scatter > 0
    assert costs.unit_zero3 >= 0 and costs.latency >= 0
