"""RunRecord round-trips through run.json; the report renders for any strategy."""
import math

import pytest

from bigtrain.diagnose import (Finding, RankMemory, RunRecord, StepTimes, render_doctor,
                               render_report)


def make_record(strategy="ddp", world=2) -> RunRecord:
    return RunRecord(
        strategy=strategy, world_size=world, threads_per_rank=1, optimizer="adam",
        precision="bf16-mixed", batch_size=64, epochs=3, optimizer_fused=False,
        samples_per_s=512.5, tokens_per_s=None, mfu=0.12, peak_flops=2e11,
        step_time=StepTimes(0.01, 0.02, 0.04, 0.005, 0.003), pipeline_bubble=None,
        memory={r: RankMemory(1000, 1000, 2000, 512, 10_000_000) for r in range(world)},
        rank_step_times=[0.08 + 0.001 * r for r in range(world)],
        history={"loss": [1.0, 0.5, float("nan")], "val_loss": [1.1, float("inf"), 0.7],
                 "accuracy": [0.5, 0.7, 0.8]},
        extra={"note": "x"})


def test_json_round_trip_keeps_everything(tmp_path):
    rec = make_record()
    path = rec.save(tmp_path / "run")
    assert path.name == "run.json" and "NaN" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temp file left
    back = RunRecord.load(tmp_path / "run")
    assert math.isnan(back.history["loss"][2]) and back.history["val_loss"][1] == math.inf
    back.history["loss"][2] = rec.history["loss"][2] = 0.0
    assert back == rec
    assert set(back.memory) == {0, 1} and isinstance(back.memory[0], RankMemory)


def test_invalid_records_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="fraction"):
        make_record().__class__(strategy="ddp", world_size=1, threads_per_rank=1,
                                optimizer="sgd", precision="32", batch_size=1, mfu=40.0)
    with pytest.raises(FileNotFoundError, match="run_dir"):
        RunRecord.load(tmp_path)


@pytest.mark.parametrize("strategy, world", [("single", 1), ("ddp", 2), ("pipeline", 4)])
def test_report_writes_markdown_and_plots(tmp_path, strategy, world):
    make_record(strategy, world).save(tmp_path)
    report = render_report(tmp_path)
    text = report.read_text()
    assert text.startswith(f"# Run report: {strategy} on {world} rank(s)")
    for png in ("loss.png", "metrics.png", "throughput.png", "memory.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"({png})" in text
    assert "| samples/s | 512.5 |" in text and "## Doctor" in text
    assert "nan_loss" in text  # the doctor's findings are part of the report
    assert text.count("\n| ") >= 5 + world


def test_render_doctor_plain_and_rich():
    fs = [Finding("slow", "info", "1 ms", "do a"), Finding("bad", "error", "2 NaN", "do b")]
    plain = render_doctor(fs)
    assert plain.splitlines()[0] == "[ERROR] bad: 2 NaN" and "-> do a" in plain
    assert "bad" in render_doctor(fs, rich=True) and render_doctor([]) == "No problems found."
    with pytest.raises(ValueError, match="severity"):
        Finding("x", "fatal", "e", "a")


def test_report_shows_how_the_step_was_measured_and_the_bubble_theory(tmp_path):
    rec = make_record("pipeline", 2)
    rec.step_time = StepTimes(data=0.001, forward=0.02, backward=0.04, comm_exposed=0.005,
                              other=0.03)
    rec.pipeline_bubble, rec.pipeline_stages, rec.microbatches = 0.31, 2, 2
    rec.extra = {"pipeline_bubble_theory": 1 / 3, "step_time_note": "timed at marks"}
    rec.script, rec.script_args = "/abs/train.py", ["--fast"]
    rec.save(tmp_path)
    assert RunRecord.load(tmp_path).script_args == ["--fast"]
    text = render_report(tmp_path).read_text()
    assert "| other | 30.00 | 31% |" in text and "| total | 96.00 | |" in text
    assert "31.0% (schedule theory 33.3%)" in text
    assert "How measured: timed at marks." in text
    assert "pipeline_bubble" in text  # 31% idle: the doctor asks for more micro-batches
