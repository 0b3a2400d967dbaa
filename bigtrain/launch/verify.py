"""Parity check of strategies against single-process training (`bigtrain verify`).

The same task (same initial weights, same data in the same order, same global batch) is
trained for K optimizer steps once in this process and once per strategy on N launched
ranks; rank 0's full state dict and the mean training loss are compared. A strategy passes
when every parameter is within the tolerance of the reference and the loss within the
tolerance relative to its magnitude (tolerance x (1 + |loss|), see loss_tolerance). A
strategy whose gradients are not synchronised correctly (a missing reduction, a wrong
scale) drifts after the first step and fails.

Example:
    rows = verify_parity(make_task, owner, ["ddp", "zero3"], devices=2, tolerance=1e-5)
    print(render_rows(rows)); sys.exit(0 if all_passed(rows) else 1)
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch

from bigtrain.engine.data import ArrayData, DatasetData
from bigtrain.engine.task import TrainTask
from bigtrain.launch import join as dist_env
from bigtrain.parallel.base import Strategy, resolve_strategy, strategy_names
from bigtrain.parallel.update_rules import rules_of

PASS, FAIL, ERROR, UNAVAILABLE, UNSUPPORTED = "pass", "FAIL", "error", "unavailable", \
    "unsupported"
#: the reference must move the parameters by more than this many tolerances, or a strategy
#: that trains wrong (or not at all) could stay within the tolerance: the check is blind
MIN_MOVE_IN_TOLERANCES = 100


class BlindCheck(ValueError):
    """The reference run moved the parameters too little for the tolerance to tell a
    broken strategy from a working one."""


@dataclass(frozen=True)
class ParityRow:
    """One strategy's verdict.

    Attributes:
        strategy: the name asked for.
        status: "pass", "FAIL" (numbers differ), "error" (the run raised), "unavailable"
            (no strategy of that name is registered: a failure, nothing was checked) or
            "unsupported" (it refuses this model/batch/devices before starting; the reason
            is in `detail`).
        max_param_diff: max |parameter - single-process parameter| over every tensor.
        loss_diff: |mean training loss - single-process mean loss| over the K steps.
        detail: a one-line explanation for anything but "pass".
    """
    strategy: str
    status: str
    max_param_diff: float | None = None
    loss_diff: float | None = None
    detail: str = ""

    def __post_init__(self):
        if self.status not in (PASS, FAIL, ERROR, UNAVAILABLE, UNSUPPORTED):
            raise ValueError(f"unknown parity status {self.status!r}")

    @property
    def failed(self) -> bool:
        return self.status in (FAIL, ERROR, UNAVAILABLE)


def check_names(names: list[str]) -> None:
    """Raise ValueError naming every unregistered strategy name and the closest valid one.

    Example:
        check_names(["ddp", "zer03"])  # ValueError: ... 'zer03' (did you mean 'zero3'?)
    """
    known = strategy_names()
    unknown = [n for n in names if n not in known]
    if not names:
        raise ValueError(f"no strategy to verify; pass names such as {', '.join(known[:4])}")
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown strategy name {', '.join(hints)}; registered names: "
                         f"{', '.join(known)}")


def check_not_blind(moved: float, tolerance: float) -> None:
    """Raise BlindCheck when the reference moved the parameters by at most
    MIN_MOVE_IN_TOLERANCES x `tolerance`: any strategy, even one that does not train, would
    then look like a pass."""
    if moved <= MIN_MOVE_IN_TOLERANCES * tolerance:
        raise BlindCheck(
            f"single-process training moved the parameters by only {moved:.2e}, not more "
            f"than {MIN_MOVE_IN_TOLERANCES} x the tolerance {tolerance:g}: a strategy that "
            "trains wrong (or not at all) would pass. Raise --steps or the learning rate, or "
            "lower --tolerance")


def first_samples(data: ArrayData, n: int) -> ArrayData:
    """The first `n` samples of `data` (views of arrays and memmaps; a Subset of Datasets)."""
    if n >= len(data):
        return data
    if isinstance(data, DatasetData):
        from torch.utils.data import Subset
        return DatasetData(Subset(data.dataset, range(n)), inputs=data.inputs,
                           outputs=data.outputs)
    sw = data.sample_weight
    return ArrayData([a[:n] for a in data.xs], [a[:n] for a in data.ys],
                     None if sw is None else sw[:n], inputs=data.inputs)


def max_state_diff(ref: dict, got: dict) -> float:
    """Max |difference| over the floating tensors of two state dicts with the same keys."""
    if set(ref) != set(got):
        only = sorted(set(ref) ^ set(got))[:4]
        raise KeyError(f"the state dicts hold different tensors (e.g. {only})")
    diffs = [float((ref[k].double() - got[k].double()).abs().max()) for k in ref
             if ref[k].is_floating_point() and ref[k].numel()]
    return max(diffs, default=0.0)


def _mean_loss(result) -> float:
    return float(result.history["loss"][-1])


def run_single(make_task: Callable[[], TrainTask], owner):
    """The reference: the task trained in this process without any strategy."""
    from bigtrain.engine.loop import run_rank
    return run_rank(make_task(), Strategy(), owner, dist_env.local_env())


def check_strategy(name: str, make_task, owner, devices: int, tolerance: float,
                   reference) -> ParityRow:
    """Train with strategy `name` on `devices` launched ranks and compare with `reference`."""
    from bigtrain.launch.launcher import launch
    if name not in strategy_names():
        return ParityRow(name, UNAVAILABLE, detail="no strategy of this name is registered "
                         f"(registered: {', '.join(strategy_names())})")
    strategy = resolve_strategy(name)
    task = make_task()
    nprocs = strategy.num_processes(devices)
    try:
        strategy.validate(nprocs, task.config.batch_size)
    except ValueError as e:
        return ParityRow(name, UNSUPPORTED, detail=str(e))
    rules = rules_of(task.make_optimizer([torch.nn.Parameter(torch.zeros(1))]))  # a probe
    refusal = strategy.refuse_update_rules(rules) if rules is not None else None
    if refusal:  # fit refuses it too, before any rank starts
        return ParityRow(name, UNSUPPORTED, detail=refusal)
    try:
        result = launch(task, strategy, nprocs, model_owner=owner)
        diff = max_state_diff(reference.state_dict, result.state_dict)
    except (RuntimeError, KeyError, ValueError) as e:
        return ParityRow(name, ERROR, detail=str(e).strip().splitlines()[-1][:300])
    ref_loss = _mean_loss(reference)
    loss_diff = abs(_mean_loss(result) - ref_loss)
    ok = diff <= tolerance and loss_diff <= loss_tolerance(ref_loss, tolerance)
    return ParityRow(name, PASS if ok else FAIL, diff, loss_diff,
                     "" if ok else f"differs from single-process training by more than "
                                   f"{tolerance:g} (loss: {tolerance:g} x (1 + |loss|) = "
                                   f"{loss_tolerance(ref_loss, tolerance):.3g})")


def loss_tolerance(loss: float, tolerance: float) -> float:
    """The allowed |loss difference| for a reference loss `loss`: `tolerance` absolute plus
    `tolerance` relative. A float32 loss of magnitude L is only known to about 1e-7 x L, and
    ranks sum it in another order than one process, so a large loss (say 1e3) of a correct
    strategy differs by more than a fixed 1e-5."""
    return tolerance * (1.0 + abs(loss))


def verify_parity(make_task: Callable[[], TrainTask], owner, strategies: list[str],
                  devices: int, tolerance: float) -> tuple[list[ParityRow], float]:
    """Every strategy's parity with single-process training, and how far the reference
    moved the parameters.

    Raises ValueError for an unregistered strategy name (before anything trains) and
    BlindCheck when the reference moves the parameters too little for `tolerance` to tell
    strategies apart (before any rank starts).

    Args:
        make_task: builds a fresh task each call, always from the same initial weights
            (K steps of data, shuffle off).
        owner: the user's model object (callbacks see it on each rank).
        strategies: registered names ("ddp", "zero3", ...).
        devices: processes per strategy run.
        tolerance: max allowed |difference| of parameters; the mean loss may differ by
            tolerance x (1 + |loss|).
    """
    check_names(strategies)
    initial = {k: v.detach().cpu().clone() for k, v in make_task().module.state_dict().items()}
    reference = run_single(make_task, owner)
    moved = max_state_diff(initial, reference.state_dict)
    check_not_blind(moved, tolerance)
    rows = [check_strategy(name, make_task, owner, devices, tolerance, reference)
            for name in strategies]
    return rows, moved


def all_passed(rows: list[ParityRow]) -> bool:
    return not any(r.failed for r in rows)


def render_rows(rows: list[ParityRow], tolerance: float) -> str:
    """Plain-text parity table (one line per strategy)."""
    fmt = lambda v: "-" if v is None else f"{v:.3e}"  # noqa: E731
    head = f"{'strategy':<16} {'max |param diff|':>17} {'|loss diff|':>12}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.strategy:<16} {fmt(r.max_param_diff):>17} {fmt(r.loss_diff):>12}  "
                     f"{r.status}" + (f": {r.detail}" if r.detail else ""))
    lines.append(f"tolerance {tolerance:g} (loss: x (1 + |loss|)); "
                 f"{sum(r.status == PASS for r in rows)} passed, "
                 f"{sum(r.failed for r in rows)} failed")
    return "\n".join(lines)

