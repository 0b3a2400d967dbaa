"""Causes that show at the start of a run, before the learning rate can be blamed: initial
weights far larger than any standard initialisation, and a NaN that comes from a batch
rather than from the updates.

Why these need their own checks: both look like a learning rate that is too high (huge
gradients, a huge or NaN loss), and both get the wrong advice from the checks that read
the symptoms ("lower the learning rate, clip gradients"). What tells them apart is when
the trouble starts. A learning rate can only do harm through updates, so the loss and the
gradients of the first step (before any update) are the model's and the data's alone; and
a loss the updates push to NaN grows on its way there, while a NaN batch turns a steady
loss into NaN in one step.

Example:
    from bigtrain.diagnose.start_checks import check_start, reconcile_start
    findings = reconcile_start(findings + check_start(record))
"""
from __future__ import annotations

import math
from dataclasses import replace

from bigtrain.diagnose.findings import Finding
from bigtrain.diagnose.grad_health import EXPLODING_NORM
from bigtrain.diagnose.lr_checks import prior_loss
from bigtrain.diagnose.record import RunRecord

#: RMS of a unit's weight-vector norm at the start above which the init is far off: He
#: (variance 2 / fan_in) gives sqrt(2) = 1.41 whatever the layer's size, Glorot and LeCun
#: less; 4 is nearly 3x He, so every unit's output is ~3x the input's scale per layer
LARGE_START_ROWS = 4.0
START_LOSS_RATIO = 3.0   # first epoch's loss / a no-skill model's loss that counts as huge
STEADY_RATIO = 3.0       # last finite step losses within this factor of the first: no rise
INIT_IMPACT = 0.9        # ranks above lr_too_high (0.8): the init explains its symptoms
NAN_BATCH_IMPACT = 0.9


def _start_symptom(record: RunRecord) -> str | None:
    """Evidence that the starting weights hurt: the first epoch's loss far above a model
    that learned nothing, or a gradient at the first step (before any update) exploding."""
    health = record.layer_health or {}
    if (health.get("steps") or [None])[0] == 0:
        for name, layer in (health.get("layers") or {}).items():
            g0 = layer["grad"][0] if layer["grad"] else 0.0
            if not math.isfinite(g0) or g0 > EXPLODING_NORM:
                return (f"layer {name}'s gradient norm was {g0:.3g} at the first step, "
                        "before any update")
    loss = record.history.get("loss") or []
    prior = prior_loss(record)
    if loss and prior and (not math.isfinite(loss[0]) or loss[0] > START_LOSS_RATIO * prior):
        return (f"the first epoch's training loss {loss[0]:.4g} is "
                f"{loss[0] / prior:.0f}x that of a model that learned nothing ({prior:.3g})"
                if math.isfinite(loss[0]) else
                "the first epoch's training loss is not finite")
    return None


def _inputs_unscaled(record: RunRecord) -> bool:
    """Inputs off the standard scale blow activations up too: that is their finding."""
    kinds = {d["kind"] for d in (record.data_profile or {}).get("data_findings", [])}
    sc = (record.data_profile or {}).get("scale") or {}
    return "feature_scale" in kinds or sc.get("median_rms", 1.0) > 20.0


def check_init(record: RunRecord) -> list[Finding]:
    """bad_init: a layer's starting weights are several times a standard initialisation's
    and the first epoch shows it (see the module docstring)."""
    rows = (record.layer_health or {}).get("start_rows") or {}
    large = {n: r for n, r in rows.items() if math.isfinite(r) and r > LARGE_START_ROWS}
    if not large or _inputs_unscaled(record):
        return []
    symptom = _start_symptom(record)
    if symptom is None:
        return []
    name = max(large, key=large.get)
    others = f" ({len(large)} layers like it)" if len(large) > 1 else ""
    return [Finding("bad_init", "error",
                    f"layer {name}'s starting weights are {large[name] / math.sqrt(2):.0f}x a "
                    f"He initialisation's (each unit's weight vector has norm "
                    f"{large[name]:.3g} on average; He gives 1.41, Glorot less){others}; "
                    f"{symptom}",
                    "initialise the weights at a standard scale: Dense(..., kernel_initializer="
                    "'he_normal') for ReLU layers, 'glorot_uniform' (Keras's default) otherwise, "
                    "instead of a large RandomNormal/RandomUniform or weights set by hand; a "
                    "lower learning rate does not fix this", INIT_IMPACT)]


def check_nan_batch(record: RunRecord) -> list[Finding]:
    """nan_inputs: the loss became NaN without rising first, on data the profile could not
    check for NaN (a Dataset) - a batch with NaN/Inf, not overshooting updates."""
    stop, losses = record.stop or {}, record.step_losses
    if stop.get("reason") != "nan_loss" or "rows" in (record.data_profile or {}):
        return []  # arrays were profiled (and fit refuses NaN arrays): not the data
    k = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if k is None:
        return []
    before = losses[:k]
    first_step = k == 0 and stop.get("epoch", 0) == 0
    if not first_step and (len(before) < 2 or max(before[-3:]) > STEADY_RATIO * before[0]):
        return []  # a loss that grew on its way to NaN: the updates overshoot
    where = f"step {k + 1} of epoch {stop.get('epoch', 0) + 1}"
    why = ("at the very first step, before any update could move the weights" if first_step
           else f"straight from steady losses ({', '.join(f'{v:.3g}' for v in before[-3:])}; "
                f"the first was {before[0]:.3g}), where updates that overshoot make the loss "
                "grow on its way to NaN")
    return [Finding("nan_inputs", "error",
                    f"the loss became NaN/Inf at {where} {why}; the data was not checked for "
                    "NaN (it came from a Dataset), so a batch holding NaN/Inf is the likely "
                    "cause",
                    "find the bad items: bad = [i for i in range(len(ds)) if not "
                    "torch.isfinite(ds[i][0]).all()], then fix or drop them (fit checks "
                    "arrays for NaN/Inf before training)", NAN_BATCH_IMPACT)]


def check_start(record: RunRecord) -> list[Finding]:
    """The start's findings: bad_init and nan_inputs (a bad init's NaN is the init's)."""
    init = check_init(record)
    return init or check_nan_batch(record)


#: what a bad start produces, and so must not outrank it or advise something else first
START_SYMPTOMS = ("exploding_gradients", "lr_too_high", "divergence", "nan_loss", "dead_units",
                  "vanishing_gradients", "underfitting", "near_chance")
#: what inputs far off the standard scale produce: huge first-layer gradients, so steps that
#: overshoot and kill units (the rate may be too high as well: lr_too_high stays as it is)
SCALE_SYMPTOMS = ("exploding_gradients", "divergence", "nan_loss", "dead_units")
CAUSES = {"bad_init": START_SYMPTOMS, "nan_inputs": START_SYMPTOMS,
          "unscaled_features": SCALE_SYMPTOMS, "feature_scale": SCALE_SYMPTOMS}
SYMPTOM_IMPACT = 0.4


def reconcile_start(findings: list[Finding]) -> list[Finding]:
    """With a cause found that makes the steps look too large (bad_init, nan_inputs,
    features off the standard scale), the findings it explains rank below it and say so
    first: a lower learning rate or clipping does not fix the cause."""
    cause = next((f.kind for f in findings if f.kind in CAUSES), None)
    if cause is None:
        return findings
    fix = f"fix {cause} (ranked above) first: it explains this"
    return [replace(f, impact=min(f.impact, SYMPTOM_IMPACT),
                    advice=fix if f.kind == "nan_loss" else f"{fix}; if it persists: {f.advice}")
            if f.kind in CAUSES[cause] else f for f in findings]
