"""bf16 on a CPU without native bf16: the decision (from injected probe results), the fit
warning before training, the planner's note and time, the doctor's slow_bf16 finding; and
one real probe that returns a sane structure."""
import warnings

import pytest

from bigtrain.diagnose import RunRecord, check_run
from bigtrain.plan import bf16
from bigtrain.plan.bf16 import Bf16Probe, SlowBf16Warning, native_bf16_flags, slow_bf16_message
from bigtrain.plan.planner import plan
from tests.api.conftest import seed_like_model, teacher_data
from tests.plan.models import mlp

EMULATED = Bf16Probe(fp32_s=0.001, bf16_s=0.02, n=256, native=False, capability="AVX2")
NATIVE = Bf16Probe(fp32_s=0.001, bf16_s=0.0006, n=256, native=True, flags=("avx512_bf16",),
                   capability="AVX512")


def test_slow_only_for_bf16_on_a_cpu_without_native_bf16():
    msg = slow_bf16_message("bf16-mixed", "cpu", EMULATED)
    assert msg and "20.0x" in msg and "precision='32'" in msg
    assert slow_bf16_message("bf16-mixed", "cpu", NATIVE) is None
    assert slow_bf16_message("32", "cpu", EMULATED) is None
    assert slow_bf16_message("bf16-mixed", "cuda", EMULATED) is None
    # a disturbed timing does not override the CPU's own flags; unknown flags trust the clock
    noisy_native = Bf16Probe(0.001, 0.005, 256, native=True)
    assert not noisy_native.slow and Bf16Probe(0.001, 0.005, 256, native=None).slow
    assert not Bf16Probe(0.001, 0.0015, 256, native=False).slow  # 1.5x: not worth a warning


def test_cpu_flags_are_read_from_cpuinfo():
    assert native_bf16_flags("processor : 0\nflags : fpu avx2 avx512f amx_bf16\n") == \
        ("amx_bf16",)
    assert native_bf16_flags("flags\t\t: fpu sse avx2 fma\n") == ()
    assert native_bf16_flags("") is None


def test_fit_warns_before_training_and_the_doctor_reads_it(monkeypatch, tmp_path):
    monkeypatch.setattr(bf16, "probe_bf16", lambda: EMULATED)
    x, y, _ = teacher_data(n=64)
    model = seed_like_model()
    with pytest.warns(SlowBf16Warning, match=r"20\.0x as long as fp32"):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, precision="bf16-mixed",
                  devices="cpu", run_dir=str(tmp_path))
    record = RunRecord.load(tmp_path)
    assert record.extra["bf16_probe"]["slowdown"] == pytest.approx(20.0)
    assert "slow_bf16" in [f.kind for f in check_run(record)]
    monkeypatch.setattr(bf16, "probe_bf16", lambda: NATIVE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowBf16Warning)
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, precision="bf16-mixed",
                  devices="cpu")


def test_planner_notes_and_scales_compute_by_the_slowdown(monkeypatch):
    fast = plan(mlp(), devices=2, batch_size=64, precision="bf16-mixed", bf16_slowdown=1.0)
    slow = plan(mlp(), devices=2, batch_size=64, precision="bf16-mixed", bf16_slowdown=20.0)
    assert slow.get("ddp").time.compute == pytest.approx(20 * fast.get("ddp").time.compute)
    assert any("slow_bf16" in n and "20.0x" in n for n in slow.notes)
    assert not any("slow_bf16" in n for n in fast.notes)
    monkeypatch.setattr("bigtrain.plan.planner.probe_bf16", lambda: EMULATED)  # this host
    probed = plan(mlp(), devices=2, batch_size=64, precision="bf16-mixed")
    assert probed.get("ddp").time.compute == pytest.approx(slow.get("ddp").time.compute)
    fp32 = plan(mlp(), devices=2, batch_size=64)
    assert not any("slow_bf16" in n for n in fp32.notes)


def _record(precision, probe):
    return RunRecord(strategy="single", world_size=1, threads_per_rank=1, optimizer="adam",
                     precision=precision, batch_size=64,
                     extra={} if probe is None else {"bf16_probe": probe})


def test_doctor_finds_slow_bf16():
    slow = {"slowdown": 20.0, "native": False, "slow": True, "matmul_n": 256}
    kinds = lambda rec: [f.kind for f in check_run(rec)]  # noqa: E731
    assert "slow_bf16" in kinds(_record("bf16-mixed", slow))
    assert "20.0x" in next(f.evidence for f in check_run(_record("bf16-mixed", slow))
                           if f.kind == "slow_bf16")
    assert "slow_bf16" not in kinds(_record("bf16-mixed", {**slow, "slow": False}))
    assert "slow_bf16" not in kinds(_record("32", slow))
    assert "slow_bf16" not in kinds(_record("bf16-mixed", None))


def test_a_real_probe_returns_a_sane_structure():
    probe = bf16.probe_bf16(n=64, repeats=2)
    assert probe.n == 64 and probe.fp32_s > 0 and probe.bf16_s > 0 and probe.slowdown > 0
    assert probe.native in (True, False, None) and isinstance(probe.capability, str)
    assert probe.slow in (True, False)
    assert bf16.probe_bf16(n=64, repeats=2) is probe  # cached per process
