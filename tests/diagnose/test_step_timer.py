"""PhaseTimer charges the time between two marks to the earlier mark's phase, on a fake
clock: exact numbers, no sleeping."""
import pytest

from bigtrain.diagnose import step_timer
from bigtrain.diagnose.step_timer import PhaseTimer, phase_of


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(step_timer.time, "perf_counter", lambda: now[0])

    def advance(seconds):
        now[0] += seconds
    return advance


def _step(timer, clock, step, data, fwd, bwd, opt, comm=0.0, callbacks=1.0):
    timer.begin_step(step)
    timer.enter("data"); clock(data)
    timer.enter("train step", phase="other"); clock(0.001)
    timer.enter("forward"); clock(fwd)
    timer.enter("backward (+ gradient sync)"); clock(bwd)
    timer.enter("gradient all-reduce", phase="comm"); clock(comm)
    timer.enter("optimizer step"); clock(opt)
    timer.enter("callbacks (batch end)"); clock(callbacks)  # not a phase: not timed


def test_phases_by_first_word_or_explicit_phase():
    assert phase_of("backward (+ gradient sync)") == "backward"
    assert phase_of("optimizer step") == "optimizer"
    assert phase_of("callbacks (batch end)") is None and phase_of("evaluate") is None
    assert phase_of("pull parameters", phase="comm") == "comm"
    with pytest.raises(ValueError, match="valid phases"):
        phase_of("x", phase="communication")


def test_means_leave_out_the_first_step_and_untimed_ops(clock):
    timer = PhaseTimer()
    _step(timer, clock, 0, data=9.0, fwd=9.0, bwd=9.0, opt=9.0, comm=9.0)  # warm-up step
    _step(timer, clock, 1, data=0.1, fwd=0.2, bwd=0.4, opt=0.05, comm=0.3)
    _step(timer, clock, 2, data=0.3, fwd=0.4, bwd=0.6, opt=0.15, comm=0.1)
    clock(5.0)  # evaluation after the last step: not charged
    means = timer.means()
    assert timer.timed_steps == 3
    assert means == pytest.approx({"data": 0.2, "forward": 0.3, "backward": 0.5,
                                   "optimizer": 0.1, "comm": 0.2, "other": 0.001})


def test_a_single_step_is_its_own_mean_and_split_moves_time(clock):
    timer = PhaseTimer()
    timer.begin_step(0)
    timer.enter("train step", phase="other")
    clock(1.0)
    timer.split_current("forward", 0.25)  # a pipeline measured its stage compute
    timer.split_current("backward", 0.5)
    timer.enter("metrics")
    assert timer.means() == pytest.approx({"data": 0.0, "forward": 0.25, "backward": 0.5,
                                           "optimizer": 0.0, "comm": 0.0, "other": 0.25})


def test_nothing_timed_gives_zeros_and_bad_sampling_is_refused():
    assert set(PhaseTimer().means().values()) == {0.0}
    with pytest.raises(ValueError, match="sample_every"):
        PhaseTimer(sample_every=0)
    with pytest.raises(ValueError, match="cpu_every"):
        PhaseTimer(cpu_every=0)


def test_cpu_times_the_first_steps_then_samples_and_weights_them(clock):
    timer = PhaseTimer(sample_every=50, cpu_every=8, exact_steps=40)
    timed = []
    for step in range(400):
        timer.begin_step(step)
        timed.append(timer.active)
        timer.enter("forward")
        clock(1.0 if step < 40 else 2.0)  # the first steps run faster
        timer.enter("callbacks (batch end)")
    steps = [s for s, t in enumerate(timed) if t]
    assert steps[:40] == list(range(40)) and timer.timed_steps == len(steps)
    assert 30 <= len(steps) - 40 <= 60  # about one in 8 of the other 360
    # the same steps on every rank, and no period a check every 50 steps falls between
    assert steps == [s for s in range(400) if s < 40 or step_timer.sampled(s, 8)]
    assert any(s % 50 == 49 for s in steps)
    # a sampled step stands for 8 steps: the mean is close to the mean over all steps but
    # the first, (39 x 1 + 360 x 2) / 399 = 1.90; unweighted, the 39 fast ones would pull
    # it to about 1.5
    assert timer.means()["forward"] == pytest.approx(1.90, rel=0.05)


def test_step_samples_hold_each_steps_own_work_without_backward(clock):
    """A sample is a step's data + forward + optimizer seconds (a data-parallel backward
    holds the wait for the other ranks), the warm-up step left out."""
    timer = PhaseTimer()
    _step(timer, clock, 0, data=9.0, fwd=9.0, bwd=9.0, opt=9.0, comm=9.0)  # warm-up step
    _step(timer, clock, 1, data=0.1, fwd=0.2, bwd=0.4, opt=0.05, comm=0.3)
    _step(timer, clock, 2, data=0.3, fwd=0.4, bwd=5.0, opt=0.15, comm=0.1)
    timer.means()
    assert timer.samples.values == pytest.approx([0.35, 0.85])


def test_step_samples_stay_few_and_are_the_same_steps_on_every_rank(clock):
    """Thinned to at most MAX_STEP_SAMPLES spread over the run: two ranks that time the
    same steps keep the same ones, whatever their speeds."""
    runs = []
    for speed in (1.0, 3.0):
        timer = PhaseTimer(cpu_every=1)
        for step in range(1000):
            timer.begin_step(step)
            timer.enter("forward")
            clock(speed * (step + 1))  # the step number, scaled: which step a sample is
            timer.enter("callbacks (batch end)")
        timer.means()
        runs.append([v / speed for v in timer.samples.values])
    kept = runs[0]
    assert runs[1] == pytest.approx(kept)
    assert 32 <= len(kept) <= step_timer.MAX_STEP_SAMPLES
    assert kept[0] == pytest.approx(2.0) and kept[-1] > 900  # step 1 (after warm-up) to the end
