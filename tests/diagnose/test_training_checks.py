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
    ("straggler", dict(rank_step_times=[0.1, 0.1, 0.16, 0.1])),
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
    s = check_run(clean_record(rank_step_times=[0.1, 0.1, 0.16, 0.1]))[0]
    assert s.evidence.startswith("rank 2")
    b = check_run(clean_record(strategy="pipeline", world_size=4, local_world_size=1,
                               microbatches=2, pipeline_bubble=0.6))[0]
    assert "Pipeline(stages=4, microbatches=27)" in b.advice  # (4-1)/(27+3) = 10%


def test_a_small_difference_between_ranks_is_no_straggler():
    """1.25x the others but 0.3 ms of a 20 ms step (the rest all-reduces): nobody waits long."""
    quick = clean_record(rank_step_times=[0.0015, 0.0012],
                         step_time=StepTimes(data=0.0002, forward=0.0004, backward=0.0003,
                                             optimizer=0.0003, comm_exposed=0.019))
    assert [f.kind for f in check_run(quick)] == ["comm_bound"]


def test_suggested_microbatches_meets_the_target():
    for p in (2, 4, 8):
        m = suggested_microbatches(p, 0.1)
        assert (p - 1) / (m + p - 1) <= 0.1 < (p - 1) / (m - 1 + p - 1)


def test_history_checks_need_enough_epochs():
    assert check_history({"loss": [1.0, 1.0]}) == []
    assert check_history({}) == []
