"""Is the learning rate too high? A verdict from several pieces of evidence in the run record,
not from one threshold, and how the other findings read once it is the cause.

A step that moves a layer's weights by a large share of their size is the first sign (about
1e-3 per step is the usual rule of thumb; Adam at 1e-3 on a glorot layer starts near 1e-2).
A large early step alone can be harmless, so the verdict needs one symptom of overshooting
as well: a training loss worse than predicting the class prior, a training loss that rises
or swings between epochs, or ReLU units that were alive at the start and died.

Example:
    from bigtrain.diagnose.lr_checks import check_lr, reconcile
    findings = reconcile(findings + check_lr(record))
"""
from __future__ import annotations

import math
from dataclasses import replace

from bigtrain.diagnose.findings import Finding
from bigtrain.diagnose.grad_health import DEAD_UNIT_SHARE, RATIO_HIGH, update_ratio
from bigtrain.diagnose.record import RunRecord

PEAK_RATIO_HIGH = 0.25   # a sampled step moving a layer by this share of its weights: huge
TARGET_PEAK = 1e-2       # the largest step of a healthy run (Adam 1e-3, SGD 0.1 on MNIST)
LOSS_RISE = 1.05         # final training loss / its best that counts as rising
PRIOR_MARGIN = 1.02      # epoch loss / class-prior loss above which the model lost ground
CE_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy")
OPTIMIZER_NAMES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop",
                   "adagrad": "Adagrad"}
LR_IMPACT = 0.8          # ranks above dead units (0.7) and the history's symptoms


def _ratios(layer: dict) -> list[float]:
    return [u / w for u, w in zip(layer["update"], layer["weight"])
            if w > 0 and math.isfinite(u) and math.isfinite(w)]


def peak_step(health: dict) -> tuple[str, float] | None:
    """(layer, largest sampled |update| / |weight|) over the run; None when unmeasured."""
    peaks = [(n, max(r)) for n, l in (health.get("layers") or {}).items()
             if (r := _ratios(l))]
    return max(peaks, key=lambda p: p[1]) if peaks else None


def prior_loss(record: RunRecord) -> float | None:
    """Cross-entropy of predicting the training class shares: what a model that learned
    nothing scores (ln C for C balanced classes); for mse, the targets' variance."""
    profile = record.data_profile or {}
    counts = profile.get("class_counts")
    if profile.get("loss") in ("mse", "mean_squared_error") and profile.get("target_std"):
        return profile["target_std"] ** 2
    if profile.get("loss") not in CE_LOSSES and profile.get("loss") != "binary_crossentropy":
        return None
    if not counts or sum(counts) == 0:
        return None
    shares = [c / sum(counts) for c in counts if c > 0]
    return -sum(s * math.log(s) for s in shares)


def _loss_symptoms(record: RunRecord) -> list[str]:
    loss = [v for v in record.history.get("loss", []) if math.isfinite(v)]
    out = []
    classes = (record.data_profile or {}).get("task") == "classification"
    prior = prior_loss(record) if classes else None
    if prior and loss and max(loss) > PRIOR_MARGIN * prior:
        k = max(range(len(loss)), key=loss.__getitem__)
        out.append(f"epoch {k + 1}'s training loss {loss[k]:.3g} is worse than predicting the "
                   f"class shares ({prior:.3g})")
    if len(loss) >= 3:
        best = min(range(len(loss)), key=loss.__getitem__)
        if best < len(loss) - 1 and loss[-1] > LOSS_RISE * loss[best]:
            out.append(f"the training loss rose from {loss[best]:.3g} (epoch {best + 1}) to "
                       f"{loss[-1]:.3g}")
        ups = sum(b > a for a, b in zip(loss, loss[1:]))
        if ups >= 2:  # a healthy run's training loss falls nearly every epoch
            out.append(f"the training loss went up in {ups} of {len(loss) - 1} epochs")
    return out


def _units_died(health: dict) -> list[str]:
    """Layers whose units took gradients at the first sample and are dead now: killed by
    the updates, not by the initialisation."""
    died = [n for n, l in (health.get("layers") or {}).items()
            if (l.get("dead_units") or 0) >= DEAD_UNIT_SHARE and l["grad"] and l["grad"][0] > 0]
    if not died:
        return []
    share = health["layers"][died[0]]["dead_units"]
    return [f"{share:.0%} of layer {died[0]}'s units died during training"]


def suggested_lr(lr: float, peak: float) -> float:
    """The rate whose largest step would be about TARGET_PEAK, on the 1-3-10 grid, 3x to
    100x below `lr` (steps far beyond that are an exploding model, not only the rate)."""
    want = min(max(lr * TARGET_PEAK / peak, lr / 100), lr / 3)
    grid = [m * 10.0 ** e for e in range(-7, 3) for m in (1.0, 3.0)]
    return min(grid, key=lambda g: abs(math.log10(g) - math.log10(want)))


def check_lr(record: RunRecord) -> list[Finding]:
    """lr_too_high when the steps are huge and the loss shows it (see the module docstring).

    Args:
        record: a run record with layer_health (nothing is said without it).
    """
    health = record.layer_health or {}
    peak = peak_step(health)
    lrs = [x for x in health.get("lr") or [] if math.isfinite(x) and x > 0]
    if peak is None or not lrs:
        return []
    ratios = [r for l in health["layers"].values() if l["update"]
              and math.isfinite(r := update_ratio(l)) and r > 0]
    median = sorted(ratios)[len(ratios) // 2] if ratios else 0.0
    symptoms = _loss_symptoms(record) + _units_died(health)
    if peak[1] < PEAK_RATIO_HIGH or not (symptoms or median > RATIO_HIGH):
        return []
    lr = max(lrs)  # the rate of the largest steps (after any warm-up)
    new = suggested_lr(lr, peak[1])
    size = f"{peak[1]:.0%} of their size" if peak[1] < 10 else f"{peak[1]:.3g}x their size"
    evidence = (f"at learning rate {lr:.3g} a step moved layer {peak[0]}'s weights by {size} "
                f"(median step {median:.2g}; about 1e-3 trains well); "
                + "; ".join(symptoms or ["the typical step is huge too"]))
    name = OPTIMIZER_NAMES.get(record.optimizer.lower(), record.optimizer)
    advice = (f"lower the learning rate {lr / new:.0f}x: optimizer={name}(learning_rate="
              f"{new:g}) (largest step near {TARGET_PEAK:g} of the weights, as in healthy "
              "runs); confirm with `bigtrain doctor RUN_DIR --lr-test`")
    return [Finding("lr_too_high", "error", evidence, advice, LR_IMPACT)]


def reconcile(findings: list[Finding]) -> list[Finding]:
    """Findings that explain others rewrite them: with a learning rate too high, dead units
    are its symptom and no advice says to raise the rate; dead units explain vanishing
    gradients and a stalled loss, so those neither outrank them nor say "raise the rate"."""
    kinds = {f.kind for f in findings}
    out = []
    for f in findings:
        if f.kind == "vanishing_gradients" and "dead_units" in kinds:
            continue  # a dead ReLU passes no gradient: the dead units are the cause
        if f.kind == "dead_units" and "lr_too_high" in kinds:
            f = replace(f, impact=0.3, advice="lower the learning rate (see lr_too_high): "
                        "the oversized steps pushed these units' inputs below 0")
        elif f.kind in ("underfitting", "near_chance") and kinds & {"lr_too_high",
                                                                     "dead_units"}:
            cause = "lr_too_high" if "lr_too_high" in kinds else "dead_units"
            f = replace(f, impact=min(f.impact, 0.3),
                        advice=f"fix {cause} (ranked above) first: it explains this, and a "
                               "higher learning rate would not")
        out.append(f)
    return out
