"""The doctor's scenario suite: real runs that go wrong for one known reason each, healthy
runs, the doctor's first finding on each, and precision / recall over the suite.

Recall: planted faults whose first finding names the cause / planted faults.
Precision: runs whose first warning names the planted cause / runs with any warning
(a warning on a healthy run counts against it).

`python -m tests.diagnose.scenarios.suite` runs the suite and rewrites the table in
README.md (between the doctor-scenarios markers); tests/diagnose/scenarios/test_scenarios.py
checks every scenario and that the README's table is the one the suite produces.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tests.diagnose.scenarios import quality as Q
from tests.diagnose.scenarios import speed as S
from tests.diagnose.scenarios.common import verdict

README = Path(__file__).resolve().parents[3] / "README.md"
BEGIN, END = "<!-- doctor-scenarios:begin -->", "<!-- doctor-scenarios:end -->"


@dataclass(frozen=True)
class Scenario:
    """One run: its name, the cause planted in it, and the finding kinds that name that
    cause (empty for a healthy run: no warning expected)."""
    name: str
    cause: str
    expect: tuple[str, ...]
    build: Callable | None = None  # None: one of speed.RANK_SCENARIOS (run together)


SCENARIOS = [
    Scenario("unscaled_uniform", "every feature mean 500, std 1000", ("unscaled_features",),
             Q.unscaled_uniform),
    Scenario("unscaled_uneven", "half the features x1000", ("feature_scale",),
             Q.unscaled_uneven),
    Scenario("label_noise", "35% of training labels flipped", ("label_noise",), Q.label_noise),
    Scenario("lr_too_high", "SGD learning rate 30", ("lr_too_high", "exploding_gradients"),
             Q.lr_too_high),
    Scenario("lr_too_low", "SGD learning rate 1e-5", ("lr_too_low",), Q.lr_too_low),
    Scenario("overfitting", "40 rows, 256 units, 25 epochs", ("overfitting",), Q.overfitting),
    Scenario("underfitting", "one-unit sigmoid bottleneck",
             ("below_baseline", "underfitting", "below_majority"), Q.underfitting),
    Scenario("class_imbalance", "95% of rows in one class", ("class_imbalance",),
             Q.class_imbalance),
    Scenario("train_val_shift", "validation features moved 2.5 std", ("train_val_shift",),
             Q.train_val_shift),
    Scenario("label_leakage", "feature 0 is the label", ("label_leakage",), Q.label_leakage),
    Scenario("split_overlap", "half the validation rows copied from training",
             ("split_overlap",), Q.split_overlap),
    Scenario("wrong_loss", "3 classes trained with mse", ("wrong_loss",), Q.wrong_loss),
    Scenario("dead_relus", "hidden biases start at -20", ("dead_units",), Q.dead_relus),
    Scenario("vanishing_gradients", "12 sigmoid layers", ("vanishing_gradients",),
             Q.vanishing_gradients),
    Scenario("issue_nan_run", "mean 500/std 1000, 40% random labels, SGD 0.5",
             ("unscaled_features",), Q.issue_nan_run),
    Scenario("issue_low_lr_run", "same data, SGD 0.001", ("unscaled_features",),
             Q.issue_low_lr_run),
    Scenario("input_bound", "dataset items take 4 ms each", ("input_bound",), S.input_bound),
    Scenario("tiny_batches", "batch_size=2", ("small_batch",), S.tiny_batches),
    Scenario("thread_oversubscription", "4x as many threads as cores",
             ("thread_oversubscription",), S.thread_oversubscription),
    Scenario("unfused_optimizer", "Adam(fused=False), 1M parameters", ("unfused_optimizer",),
             S.unfused_optimizer),
    Scenario("slow_bf16", "bf16-mixed where the CPU probe finds bf16 12x slower",
             ("slow_bf16",), S.slow_bf16),
    Scenario("straggler", "rank 1 sleeps 30 ms per forward", ("straggler",)),
    Scenario("comm_bound", "DDP with 0 MB gradient buckets", ("comm_bound",)),
    Scenario("pipeline_bubble", "2 pipeline stages, 1 micro-batch", ("pipeline_bubble",)),
    Scenario("healthy_binary", "none", (), Q.healthy_binary),
    Scenario("healthy_multiclass", "none", (), Q.healthy_multiclass),
    Scenario("healthy_regression", "none", (), Q.healthy_regression),
    Scenario("healthy_normalized", "none (raw x1000 data, Normalization layer)", (),
             Q.healthy_normalized),
    Scenario("healthy_adam_small_lr", "none", (), Q.healthy_adam_small_lr),
]


def run_suite() -> dict[str, list]:
    """Every scenario's ranked warnings (info findings left out), by name. One torch
    thread: these models are tiny, and spare threads only spin on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = {}
        for s in SCENARIOS:
            if s.build is not None:
                torch.manual_seed(0)  # the same initial weights whatever ran before
                records[s.name] = s.build()
    finally:
        torch.set_num_threads(threads)
    records.update(S.rank_scenarios())
    return {name: verdict(rec) for name, rec in records.items()}


def hit(s: Scenario, findings: list) -> bool:
    """The doctor's first finding names the planted cause (or, healthy: no warning)."""
    return findings[0].kind in s.expect if s.expect else not findings


def scores(results: dict[str, list]) -> tuple[float, float]:
    """(precision, recall) over the suite (see the module docstring)."""
    faulty = [s for s in SCENARIOS if s.expect]
    right = sum(hit(s, results[s.name]) for s in faulty)
    warned = sum(bool(results[s.name]) for s in SCENARIOS)
    return (right / warned if warned else 1.0), right / len(faulty)


def table(results: dict[str, list]) -> str:
    """The README's Markdown table of the suite."""
    lines = ["| run | planted cause | doctor's first finding | |", "|---|---|---|---|"]
    for s in SCENARIOS:
        first = results[s.name][0].kind if results[s.name] else "(no warning)"
        mark = "ok" if hit(s, results[s.name]) else "MISSED"
        lines.append(f"| {s.name} | {s.cause} | {first} | {mark} |")
    precision, recall = scores(results)
    faulty = sum(bool(s.expect) for s in SCENARIOS)
    lines += ["", f"{faulty} faulty and {len(SCENARIOS) - faulty} healthy runs: precision "
                  f"{precision:.2f}, recall {recall:.2f}."]
    return "\n".join(lines)


def readme_table(text: str) -> str | None:
    """The table between the markers in README text (None when the markers are missing)."""
    m = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    return m.group(1) if m else None


def write_readme(results: dict[str, list]) -> None:
    text = README.read_text()
    new = f"{BEGIN}\n{table(results)}\n{END}"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block to fill")
    README.write_text(re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: new, text,
                             flags=re.S))


if __name__ == "__main__":
    results = run_suite()
    print(table(results))
    if "--no-write" not in sys.argv:
        write_readme(results)
