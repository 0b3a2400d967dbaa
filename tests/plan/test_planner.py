"""The planner ranks strategies: fitting first, then by estimated time, with reasons."""
import pytest
from rich.console import Console
from rich.table import Table

from bigtrain.plan import DeviceSpec, cpu_device, measure_cpu_device, plan
from tests.plan.models import TinyGPT, mlp

GPU = DeviceSpec("cuda", 80e9, 300e12, 100e9, 20e9)


def test_plan_lists_every_strategy_that_fits_the_world_size():
    p = plan(mlp(), devices=2, batch_size=64)
    names = {e.strategy for e in p.estimates}
    assert names == {"ddp", "zero1", "zero2", "zero3", "pipeline", "tensor", "ps"}
    assert "single" in p.skipped and "fsdp_offload" in p.skipped  # CPU: offload frees nothing
    assert all(e.reason for e in p.estimates)
    one = plan(mlp(), devices=1, batch_size=64, device=GPU)
    assert [e.strategy for e in one.estimates] == ["single", "fsdp_offload"]


def test_fitting_strategies_rank_first_and_reasons_say_why():
    # 1B params, fp32 Adam: DDP needs 16 GB + buckets per rank; 8 ranks of 10 GB
    p = plan(1e9, devices=8, batch_size=64, device=GPU, device_memory=10e9)
    fits = [e.fits for e in p.estimates]
    assert fits == sorted(fits, reverse=True)  # all True before any False
    ddp = p.get("ddp")
    assert not ddp.fits and ddp.reason.startswith("Does not fit")
    assert p.best.fits and p.best.strategy in ("zero2", "zero3", "pipeline", "tensor")
    assert "fastest" in p.best.reason
    times = [e.time.total for e in p.estimates if e.fits]
    assert times == sorted(times)


def test_best_is_none_when_nothing_fits():
    p = plan(1e12, devices=2, batch_size=8, device=GPU)  # 16 TB of fp32 Adam states
    assert p.best is None and all(not e.fits for e in p.estimates)
    off = p.get("fsdp_offload")
    assert off.memory.offloaded_host == 16e12 / 2 and "host" in off.reason


def test_ddp_time_is_compute_plus_ring_allreduce():
    n, psi = 4, 1_000_000
    p = plan(psi, devices=n, batch_size=32, device=GPU)
    t = p.get("ddp").time
    assert t.compute == pytest.approx(6 * psi * 32 / n / GPU.flops)
    # one 4 MB gradient bucket: bandwidth term + one collective's latency
    assert t.comm == pytest.approx(2 * (n - 1) / n * 4 * psi / GPU.bandwidth + GPU.latency)


def test_latency_counts_collectives():
    big = plan(1e9, devices=2, batch_size=8, device=GPU).get("ddp").time  # 4 GB of grads
    fast = plan(1e9, devices=2, batch_size=8,
                device=DeviceSpec("cuda", 80e9, 300e12, 100e9, latency=0.0)).get("ddp").time
    buckets = -(-4e9 // (25 * 2 ** 20))
    assert big.comm - fast.comm == pytest.approx(buckets * GPU.latency)


def test_pipeline_bubble_shrinks_with_microbatches():
    few = plan(mlp(), devices=4, batch_size=64, microbatches=1).get("pipeline").time
    many = plan(mlp(), devices=4, batch_size=64, microbatches=16).get("pipeline").time
    assert few.bubble_fraction == pytest.approx(0.75)
    assert many.bubble_fraction == pytest.approx(3 / 19)
    assert many.bubble < few.bubble


def test_activations_scale_with_batch_and_accept_override():
    small = plan(mlp(), devices=2, batch_size=32).get("ddp").memory.activations
    large = plan(mlp(), devices=2, batch_size=64).get("ddp").memory.activations
    assert large == pytest.approx(2 * small)
    given = plan(mlp(), devices=2, batch_size=64, activation_bytes_per_sample=1000)
    assert given.get("ddp").memory.activations == 1000 * 32
    mixed = plan(mlp(), devices=2, batch_size=64, precision="bf16-mixed")
    assert mixed.get("ddp").memory.activations == pytest.approx(large / 2)


def test_gpt_plan_counts_sequence_length():
    a = plan(TinyGPT(), devices=2, batch_size=8, seq_len=16).get("ddp")
    b = plan(TinyGPT(), devices=2, batch_size=8, seq_len=32).get("ddp")
    assert b.memory.activations > 1.9 * a.memory.activations
    assert b.time.compute > 1.9 * a.time.compute


def test_small_batch_skips_data_parallel():
    p = plan(mlp(), devices=4, batch_size=2)
    assert "ddp" in p.skipped and "batch_size" in p.skipped["ddp"]
    assert {"pipeline", "tensor"} <= {e.strategy for e in p.estimates}


def test_tables_render():
    p = plan(mlp(), devices=2, batch_size=64)
    md = p.table(markdown=True)
    for e in p.estimates:
        assert f"| {e.strategy} |" in md
    assert "skipped single" in md
    table = p.table()
    assert isinstance(table, Table)
    console = Console(width=200, record=True)
    console.print(table)
    assert "zero3" in console.export_text()


def test_devices_and_bad_input():
    assert cpu_device(ranks_per_host=2, cores=4).flops == cpu_device(cores=4).flops / 2
    spec = measure_cpu_device(n=64, copy_mb=1, repeats=1)
    assert spec.flops > 0 and spec.bandwidth > 0 and spec.kind == "cpu"
    with pytest.raises(ValueError, match="memory_bytes"):
        DeviceSpec("cpu", 0, 1, 1)
    with pytest.raises(ValueError, match="preset"):
        DeviceSpec.preset("tpu-v9")
    with pytest.raises(ValueError, match="devices"):
        plan(1000, devices=0, batch_size=1)
