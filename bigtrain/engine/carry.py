"""The optimizer's state from one fit call to the next, as Keras keeps its optimizer.

In Keras, `fit(epochs=1)` twice trains exactly as `fit(epochs=2)` once: the optimizer (its
moments, step count, and a learning rate a callback or the user changed) lives on the model.
bigtrain builds the torch optimizer inside each fit, so a fit in this process hands its
optimizer back (the model keeps it as `model.optimizer`) and the next fit under the same
compile loads its `state_dict()` (read then, so changes made between the calls count) into
the optimizer it builds. A new `compile` starts afresh, as in Keras.

Not carried: float16's loss scale, which lives beside the optimizer's state_dict; it
restarts with each fit. The moving average of `use_ema` rides in the state_dict of one
process's optimizer (bigtrain.parallel.update_rules.EmaState), so it continues there; a fit on
several processes hands it back with the rest of the state (whole tensors by parameter name,
as the moments), so it continues after such a fit too.

A fit on several processes hands its whole optimizer state back too: every rank enters a
gather at its end, rank 0 returns the state (`FitResult.optimizer_state`, see
bigtrain.engine.carry_state) and the caller loads it into a plain optimizer over its own
network, kept as after a one-process fit. A next fit on several processes ships that state
to its ranks (`Carry.state`), each of which loads its share (`load_carried`). Strategies
that cannot (parameter servers, pipelines, hybrids, ddp_cpu_optimizer: see
`carry_state.carries`) start the next fit with a fresh optimizer and say so (a warning);
`checkpoint_dir=` with `resume="auto"` continues exactly. Their learning rate does carry:
rank 0 hands back the rate the run ended with (`final_rate`), which the compiled optimizer
then starts from (`keep_final_rate`), so `model.optimizer.learning_rate` reads what a
callback (ReduceLROnPlateau, LearningRateScheduler) left, as in Keras. So does a
learning-rate schedule's step count (`final_steps`, `keep_final_steps`): the next fit
continues the schedule where the ranks left it, as Keras's `iterations`. Both go the other
way too: a multi-process fit after a one-process one starts its ranks from the carried
optimizer's rate and step count (`start_ranks_from`).

Example:
    load_carried(task.carry, strategy, optimizer, module)  # before a checkpoint may resume
    ...
    result.optimizer = carried_optimizer(strategy, optimizer)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Carry:
    """What the previous fit of a model under its current compile left.

    Attributes:
        optimizer: its torch optimizer, or None when its strategy could not hand the
            state back (nothing to carry).
        state: for the ranks of a fit on several processes: that optimizer's whole state
            in torch's full layout (bigtrain.engine.carry_state), which each rank loads.
    """
    optimizer: object
    state: dict | None = None


def _plain(optimizer) -> bool:
    """A torch optimizer over plain tensors: its state_dict is the whole state and loads
    by position into the same kind of optimizer over the same parameters."""
    from torch.distributed.tensor import DTensor
    return (type(optimizer).load_state_dict is torch.optim.Optimizer.load_state_dict
            and not any(isinstance(p, DTensor) for g in optimizer.param_groups
                        for p in g["params"]))


def carried_optimizer(strategy, optimizer):
    """What the next fit continues from: this optimizer, in a one-process run (a fit on
    several processes hands its state back through `carry_state.gather_full` instead)."""
    return optimizer if not strategy.env.distributed and _plain(optimizer) else None


def warn_fresh(optimizer_name: str) -> None:
    """Say that this fit does not continue the previous fit's optimizer."""
    warnings.warn(
        f"this fit starts with a fresh {optimizer_name} state: this fit or the model's "
        "previous one ran under a strategy whose optimizer state stays with its ranks "
        "(parameter servers, pipelines, hybrid, ddp_cpu_optimizer), and such state does "
        "not carry from one fit call to the next as Keras's does. To continue exactly, fit "
        "once with more epochs, or pass checkpoint_dir= (resume='auto' continues from its "
        "newest checkpoint)", UserWarning, stacklevel=3)


def load_carried(carry: Carry | None, strategy, optimizer, module=None) -> None:
    """Continue from the previous fit's optimizer state where there is one to load (the
    ranks of a fit on several processes: every rank, from `carry.state`)."""
    if carry is None:
        return
    if carry.state is not None:
        from bigtrain.engine.carry_state import load_full
        load_full(strategy, module, optimizer, carry.state)
        return
    if carry.optimizer is None or carried_optimizer(strategy, optimizer) is None:
        if strategy.env.is_main:
            warn_fresh(type(optimizer).__name__)
        return
    if not same_parameters(carry.optimizer, optimizer):
        warnings.warn(f"this fit starts with a fresh {type(optimizer).__name__} state: it "
                      "trains other parameters than the previous fit (a layer's trainable "
                      "changed? Keras asks for a new compile then)", UserWarning, stacklevel=2)
        return
    optimizer.load_state_dict(carry.optimizer.state_dict())


def same_parameters(old, new) -> bool:
    """The same optimizer class over the same parameter objects, group by group:
    `load_state_dict` matches states by position and checks only the counts."""
    if type(old) is not type(new) or len(old.param_groups) != len(new.param_groups):
        return False
    return all(len(a["params"]) == len(b["params"])
               and all(p is q for p, q in zip(a["params"], b["params"]))
               for a, b in zip(old.param_groups, new.param_groups))


def final_rate(optimizer) -> float | None:
    """The learning rate `optimizer`'s param groups ended with, or None where they hold
    none (a parameter server's workers: the rate lives on the servers) or several."""
    rates = {group.get("lr") for group in optimizer.param_groups}
    if len(rates) != 1 or None in rates:
        return None
    return float(rates.pop())


def keep_final_rate(spec, carried, rate: float | None) -> None:
    """After a fit on several processes (`carried` None: this process holds none of its
    optimizers; they may hand their state back too, bigtrain.engine.carry_state), make the compiled OptimizerSpec `spec` start the next fit at `rate`,
    the one the run ended with, as Keras's optimizer keeps its `learning_rate` variable.
    Left as compiled: a schedule (its rate follows the step count, which does not carry)
    and an optimizer instance's own param groups (each keeps its own rate)."""
    if carried is not None or rate is None or spec.schedule is not None or spec.groups:
        return
    spec.learning_rate = rate


def final_steps(optimizer) -> int | None:
    """The optimizer steps `optimizer` counted (its param groups' "iterations", Keras's
    `iterations`, bigtrain.api.optimizers), or None for one that counts none."""
    counts = {group.get("iterations") for group in optimizer.param_groups}
    if len(counts) != 1 or None in counts:
        return None
    return int(counts.pop())


def keep_final_steps(spec, carried, steps: int | None) -> None:
    """After a fit whose optimizer does not carry (`carried` None), make the compiled
    OptimizerSpec `spec` start the next fit's step count (`iterations`, and its schedule)
    at `steps`, the count the run ended with (Keras's `iterations` lives on across fit
    calls)."""
    if carried is not None:
        return
    if steps is None and spec.schedule is None:
        return  # no count came back and no schedule depends on one
    if steps is None:  # the ranks' optimizer counted no steps
        warnings.warn(f"the ranks did not report how many steps the learning-rate schedule "
                      f"({type(spec.schedule).__name__}) took, so the next fit starts the "
                      f"schedule again at "
                      f"step {spec.start_step}, where Keras would go on; train with "
                      "strategy='ddp' (or a sharded one) to carry it", RuntimeWarning,
                      stacklevel=3)
        return
    spec.start_step = steps


def start_ranks_from(spec, optimizer) -> None:
    """Before a fit on several processes, whose ranks build their optimizer from the
    compiled `spec`: start them at the rate and schedule step `optimizer` (the previous,
    one-process fit's) ended with. Where the ranks load its whole state (`Carry.state`)
    that sets the same rate and step; where not, its moments stay behind (`warn_fresh`)."""
    if optimizer is None:  # nothing carried here: `spec` holds both already
        return
    keep_final_rate(spec, None, final_rate(optimizer))
    keep_final_steps(spec, None, final_steps(optimizer))
