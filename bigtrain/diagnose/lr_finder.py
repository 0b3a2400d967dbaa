"""Learning-rate range test over a callable: is the current learning rate too high or too low?

The caller supplies `step_fn(lr) -> loss`: restore the same initial weights, train a few
steps at `lr`, return the final training loss. This module only decides from the numbers, so
it is a pure function and the model wiring lives with the engine.

Example:
    def step_fn(lr):
        model.load_state_dict(initial_state)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for x, y in batches[:5]:
            opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); opt.step()
        return loss.item()

    finding = lr_range_test(step_fn, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], current_lr=1e-5)
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from bigtrain.diagnose.findings import Finding

#: the current lr is wrong when it achieves less than this share of the best loss drop
GOOD_ENOUGH = 0.5


def _table(losses: dict[float, float]) -> str:
    return ", ".join(f"{lr:.0e}: {loss:.4g}" for lr, loss in sorted(losses.items()))


def lr_range_test(step_fn: Callable[[float], float], lrs: Sequence[float], *,
                  current_lr: float | None = None,
                  baseline: float | None = None) -> Finding | None:
    """Train briefly at each learning rate and judge `current_lr` against the best one.

    Args:
        step_fn: lr -> loss after a few steps from the same starting weights.
        lrs: learning rates to try (any order).
        current_lr: the learning rate the run uses; also tried. None: only report the
            best learning rate found.
        baseline: loss before training; None calls step_fn(0.0).

    Returns:
        A "lr_too_high" / "lr_too_low" finding when the current lr achieves less than half
        of the best loss drop, a "lr_range" finding when no lr helps at all or no current
        lr was given, else None.

    Example:
        >>> lr_range_test(lambda lr: abs(1.0 - lr), [0.1, 0.5, 1.0], current_lr=0.9) is None
        True
    """
    if not lrs:
        raise ValueError("lrs is empty; pass learning rates to try, e.g. [1e-4, 1e-3, 1e-2]")
    base = float(step_fn(0.0)) if baseline is None else float(baseline)
    tried = sorted(set(lrs) | ({current_lr} if current_lr is not None else set()))
    losses = {lr: float(step_fn(lr)) for lr in tried}
    drop = {lr: base - l if math.isfinite(l) else -math.inf for lr, l in losses.items()}
    best = max(drop, key=drop.get)
    if drop[best] <= 0:
        return Finding("lr_range", "error",
                       f"no learning rate lowered the loss from {base:.4g}: {_table(losses)}",
                       f"try smaller rates (below {min(tried):.0e}) and check the loss and "
                       "labels")
    if current_lr is None:
        return Finding("lr_range", "info",
                       f"lr {best:.0e} lowered the loss most ({base:.4g} -> "
                       f"{losses[best]:.4g}): {_table(losses)}",
                       f"use learning_rate={best:.0e}")
    if drop[current_lr] >= GOOD_ENOUGH * drop[best]:
        return None
    kind = "lr_too_high" if current_lr > best else "lr_too_low"
    what = ("diverged" if not math.isfinite(losses[current_lr]) or drop[current_lr] < 0
            else f"reached {losses[current_lr]:.4g}")
    return Finding(kind, "warning",
                   f"at the current lr {current_lr:.0e} the loss {what}; lr {best:.0e} "
                   f"reached {losses[best]:.4g} from {base:.4g} ({_table(losses)})",
                   f"set learning_rate={best:.0e}")
