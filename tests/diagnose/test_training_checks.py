"""Each run finding fires on a planted record and stays silent on a clean one."""
import dataclasses

import pytest

from bigtrain.diagnose import RunRecord, StepTimes, check_history, check_run
from bigtrain.diagnose.training_checks import suggested_microbatches


def clean_record(**changes) -> RunRecord:
    base = dict(strategy="ddp", world_size=2, threads_per_rank=1, optimizer="adam",
                precision="32", batch_size=256, epochs=4, optimizer_fused=True,
                local_world_size=2, cpu_cores=2, num_classes=10, samples_per_s=900.0,
                mfu=0.4, peak_flops=1e11,
                step_time=StepTimes(data=0.002, forward=0.03, backward=0.06, optimizer=0.005,
                                    comm_exposed=0.01),
                rank_step_times=[0.107, 0.11],
                history={"loss": [1.2, 0.6, 0.45, 0.4], "val_loss": [1.1, 0.65, 0.5, 0.47],
                         "accuracy": [0.6, 0.8, 0.86, 0.88]})
    base.update(changes)
    return RunRecord(**base)


def _st(**kw):
    return dataclasses.replace(clean_record().step_time, **kw)


def _samples(means, slow_steps=range(20), steps=20):
    """Per-step samples of ranks whose steps take `means` seconds (+-5% jitter), except
    that rank 2 or the last rank is slow by its mean's excess only in `slow_steps`."""
    jitter = [1.0 + 0.05 * ((7 * i) % 5 - 2) / 2 for i in range(steps)]
    base = min(means)
    out = []
    for m in means:
        extra = (m - base) * steps / len(slow_steps)  # the same mean, packed into slow_steps
        out.append([base * j + (extra if i in slow_steps else 0.0)
                    for i, j in enumerate(jitter)])
    return out


STRAGGLER = dict(rank_step_times=[0.1, 0.1, 0.16, 0.1],
                 rank_step_samples=_samples([0.1, 0.1, 0.16, 0.1]))


def test_clean_run_has_no_findings():
    assert check_run(clean_record()) == []


@pytest.mark.parametrize("kind, changes", [
    ("input_bound", dict(step_time=_st(data=0.1))),
    ("comm_bound", dict(step_time=_st(comm_exposed=0.15))),
    ("small_batch", dict(batch_size=16, mfu=0.03)),
    ("thread_oversubscription", dict(threads_per_rank=2)),
    ("unfused_optimizer", dict(optimizer_fused=False, step_time=_st(optimizer=0.03))),
    ("pipeline_bubble", dict(strategy="pipeline", world_size=4, local_world_size=1,
                             microbatches=2, pipeline_bubble=0.6)),
    ("straggler", STRAGGLER),
    ("nan_loss", dict(history={"loss": [1.0, float("nan"), float("nan")]})),
    ("divergence", dict(history={"loss": [1.0, 0.7, 1.5, 3.0]})),
    ("overfitting", dict(history={"loss": [1.0, 0.6, 0.3, 0.1],
                                  "val_loss": [1.0, 0.7, 0.9, 1.2]})),
    ("underfitting", dict(history={"loss": [2.30, 2.30, 2.29, 2.29]})),
    ("near_chance", dict(history={"loss": [2.3, 2.0, 1.8, 1.7],
                                  "accuracy": [0.1, 0.1, 0.11, 0.1]})),
])
def test_planted_problem_is_found_with_numbers_and_advice(kind, changes):
    findings = check_run(clean_record(**changes))
    assert [f.kind for f in findings] == [kind]
    f = findings[0]
    assert any(ch.isdigit() for ch in f.evidence) and f.advice


def test_finding_details():
    f = check_run(clean_record(threads_per_rank=4))[0]
    assert "2 ranks x 4 threads = 8 threads on 2 cores" in f.evidence
    assert "torch.set_num_threads(1)" in f.advice
    s = check_run(clean_record(**STRAGGLER))[0]
    assert s.evidence.startswith("rank 2") and "slower in 20 of 20 sampled steps" in s.evidence
    b = check_run(clean_record(strategy="pipeline", world_size=4, local_world_size=1,
                               microbatches=2, pipeline_bubble=0.6))[0]
    assert "Pipeline(stages=4, microbatches=27)" in b.advice  # (4-1)/(27+3) = 10%


def test_a_small_difference_between_ranks_is_no_straggler():
    """1.25x the others but 0.3 ms of a 20 ms step (the rest all-reduces): nobody waits long."""
    quick = clean_record(rank_step_times=[0.0015, 0.0012],
                         step_time=StepTimes(data=0.0002, forward=0.0004, backward=0.0003,
                                             optimizer=0.0003, comm_exposed=0.019))
    assert [f.kind for f in check_run(quick)] == ["comm_bound"]


def test_a_rank_slow_in_a_burst_or_by_noise_is_no_straggler():
    """Ranks sharing a host's cores: one rank's mean is 1.6x the other's because another
    process took its core for 5 of 20 steps, or by a gap within the steps' own spread.
    Neither holds up step after step, so neither is a straggler; without per-step samples
    (an older record) only a gap of 2x or more counts."""
    means = [0.1, 0.1, 0.16, 0.1]
    burst = clean_record(rank_step_times=means,
                         rank_step_samples=_samples(means, slow_steps=range(5, 10)))
    assert check_run(burst) == []
    noisy = [[0.1 * (1 + 0.4 * ((i * (3 + r)) % 7 - 3) / 3) for i in range(20)]
             for r in range(2)]
    noisy[1] = [v * 1.05 for v in noisy[1]]  # 5% slower, within +-40% steps
    close = clean_record(rank_step_times=[0.1, 0.125], rank_step_samples=noisy)
    assert "straggler" not in [f.kind for f in check_run(close)]
    assert check_run(clean_record(rank_step_times=[0.1, 0.16, 0.1, 0.1])) == []
    assert [f.kind for f in check_run(clean_record(rank_step_times=[0.1, 0.22]))] == [
        "straggler"]


def test_small_batches_are_the_suspect_only_where_a_batch_can_matter():
    """16 samples per rank at MFU 0.1%: 4x the batch could make it 0.4% at most, far from
    any use of the cores; the model is too small, not its batch. 4 samples per rank are
    too few whatever the model, and 16 at MFU 5% (a model whose matmuls a batch feeds)."""
    def kinds(batch, mfu):
        return [f.kind for f in check_run(clean_record(batch_size=batch, mfu=mfu))]
    assert kinds(32, 0.001) == []
    assert kinds(8, 0.001) == ["small_batch"]
    assert kinds(32, 0.05) == ["small_batch"]


def test_suggested_microbatches_meets_the_target():
    for p in (2, 4, 8):
        m = suggested_microbatches(p, 0.1)
        assert (p - 1) / (m + p - 1) <= 0.1 < (p - 1) / (m - 1 + p - 1)


def test_history_checks_need_enough_epochs():
    assert check_history({"loss": [1.0, 1.0]}) == []
    assert check_history({}) == []
