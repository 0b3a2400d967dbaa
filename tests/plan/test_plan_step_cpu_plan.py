"""The planner's CPU-rank step time through `plan` itself: buffer copies on the rank's core,
the DTensor optimizers' slower update, the pipeline's heaviest stage."""
from __future__ import annotations

import pytest
from torch import nn

from bigtrain.plan import DeviceSpec, plan
from bigtrain.plan.cost import training_flops
from bigtrain.plan.kernels import KernelProbe


def _cpu(**kw) -> DeviceSpec:
    return DeviceSpec("cpu", 8e9, 1e11, 2e9, memory_bandwidth=1e10, latency=5e-5, **kw)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))


def test_cpu_rank_step_counts_its_buffer_copies():
    """zero3 copies the gathered parameters out twice and the gradients in once; ddp copies
    gradients into its buckets and back: on a CPU rank, beyond compute, comm and update."""
    p = plan(_mlp(), devices=2, batch_size=8, device=_cpu())
    psi = p.profile.n_params
    for name, copied in (("zero3", 12 * psi), ("ddp", 8 * psi)):
        t = p.get(name).time
        rest = t.total - (t.compute + t.comm + t.bubble + t.update + t.offload)
        assert rest == pytest.approx(2 * copied / 1e10), name
    # an accelerator's copies run on the device: not priced
    t = plan(_mlp(), devices=2, batch_size=8, device=DeviceSpec.preset("a100-80gb")).get(
        "zero3").time
    assert t.total == pytest.approx(t.compute + t.comm + t.bubble + t.update + t.offload)


def test_dtensor_optimizers_update_slower_than_plain_ones():
    """zero2/zero3/tensor hand the optimizer DTensors (no fused kernel): with the kernel
    probe, their update of the same 1/n share is priced at the per-tensor loop's speed."""
    probe = KernelProbe(peak_flops=1e11, stream_bandwidth=1e10)
    p = plan(_mlp(), devices=2, batch_size=8, device=_cpu(kernels=probe))
    fused = p.get("zero1").time.update
    for name in ("zero2", "zero3", "tensor"):
        assert p.get(name).time.update > fused, name


def test_pipeline_step_follows_its_heaviest_stage():
    """A chain whose second half holds most of the FLOPs: the pipeline's compute is that
    stage's share of every micro-batch, not half the model."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 512), nn.Linear(512, 512),
                          nn.Linear(512, 64))
    p = plan(model, devices=2, batch_size=8, device=_cpu())
    t = p.get("pipeline").time
    full = training_flops(p.profile, 8) / 1e11
    assert t.compute > 0.8 * full  # the cut [2, 2] leaves ~89 % of the FLOPs on stage 2
