"""Gradient health: per-layer gradient, weight and update norms sampled during a fit, and the
findings they support (exploding / vanishing gradients, dead units, a learning rate whose
updates are far from ~1e-3 of the weights).

`GradHealth` hangs on the optimizer's step hooks (torch.optim.Optimizer.register_step_pre_hook
/ register_step_post_hook), so it sees the gradients the optimizer applies (after any
gradient sync and loss unscaling) and the weights before and after the update, without
touching the training step. One step in `every` is measured: a norm per parameter and one
copy of the weights, nothing on the other steps.

Example:
    health = GradHealth(model.net, every=10)
    health.attach(optimizer)
    ...train...
    health.detach()
    findings = check_gradients(health.summary())
"""
from __future__ import annotations

import math
import re
from dataclasses import replace

import torch
from torch import nn

from bigtrain.diagnose.findings import Finding

EXPLODING_NORM = 1e3       # a layer's gradient norm above this explodes
VANISHING_RATIO = 1e-4     # first layer's gradient norm / last layer's below this vanishes
DEAD_UNIT_SHARE = 0.5      # units without a gradient in recent samples above this: dead
DEAD_WINDOW = 4            # the recent samples a dead unit got no gradient in
RATIO_LOW, RATIO_HIGH = 1e-5, 1e-1  # median update/weight ratio outside this: lr far off
MAX_SAMPLES = 256          # sampled steps kept per run (older ones are thinned)
_UNIT_MODULES = (nn.Linear, nn.modules.conv._ConvNd)  # dim 0 of the weight = output units


def layer_name(path: str) -> str:
    """A readable layer name from a module path: wrappers' prefixes and the inner torch
    module of a bigtrain layer left out ("module.layers.dense_1.linear" -> "dense_1")."""
    path = re.sub(r"^((module|_orig_mod|_fsdp_wrapped_module)\.)+", "", path)
    path = re.sub(r"^layers\.", "", path)
    return re.sub(r"\.(linear|conv|cell|embedding)$", "", path) or "model"


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class GradHealth:
    """Samples per-layer norms every `every` optimizer steps.

    Args:
        net: the model (its leaf modules with trainable parameters are the layers).
        every: measure one optimizer step in this many (the first step is always measured).
    """

    def __init__(self, net: nn.Module, every: int = 10):
        if every < 1:
            raise ValueError(f"GradHealth every must be >= 1, got {every}")
        self.every, self.count = every, 0
        self.layers: dict[str, list[torch.Tensor]] = {}
        self.units: dict[str, torch.Tensor] = {}  # layer -> weight whose rows are units
        for path, mod in net.named_modules():
            params = [p for p in mod.parameters(recurse=False) if p.requires_grad]
            if params:
                name = layer_name(path)
                self.layers.setdefault(name, []).extend(params)
                if isinstance(mod, _UNIT_MODULES) and mod.weight.requires_grad:
                    self.units[name] = mod.weight
        # per layer: which units had a gradient, at each of the last DEAD_WINDOW samples
        self.recent: dict[str, list[torch.Tensor]] = {name: [] for name in self.units}
        self.steps: list[int] = []
        self.lr: list[float] = []
        self.grad = {n: [] for n in self.layers}
        self.weight = {n: [] for n in self.layers}
        self.update = {n: [] for n in self.layers}
        self.with_grad: set[str] = set()  # layers this rank saw a gradient for
        # layer -> RMS over its units of each unit's weight-vector norm at the fit's first
        # step: sqrt(fan_in * variance), about 1.4 for He and under 1.5 for Glorot, whatever
        # the layer's size (a shard of rows gives the same figure)
        self.start_rows: dict[str, float] = {}
        self._before: dict[str, list[torch.Tensor]] | None = None
        self._handles: list = []

    def attach(self, optimizer) -> bool:
        """Hook into `optimizer`; False (and nothing measured) when it has no step hooks
        (an optimizer wrapper that is not a torch Optimizer)."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            return False
        self._handles = [optimizer.register_step_pre_hook(self._pre),
                         optimizer.register_step_post_hook(self._post)]
        return True

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, optimizer, args, kwargs) -> None:
        if self.count % self.every:
            return
        self.steps.append(self.count)
        self.lr.append(float(optimizer.param_groups[0].get("lr", float("nan"))))
        with torch.no_grad():
            for name, params in self.layers.items():
                grads = [_local(p.grad).float() for p in params if p.grad is not None]
                if grads:
                    self.with_grad.add(name)
                g = math.sqrt(sum(float(x.pow(2).sum()) for x in grads)) if grads else 0.0
                self.grad[name].append(g)
                self.weight[name].append(
                    math.sqrt(sum(float(_local(p).float().pow(2).sum()) for p in params)))
            if self.count == 0:
                self._start_rows()
            for name, w in self.units.items():
                # a NaN gradient (a NaN batch) says nothing about which units are alive
                if w.grad is not None and bool(torch.isfinite(_local(w.grad)).all()):
                    g = _local(w.grad)
                    self.recent[name] = (self.recent[name] + [g.reshape(g.shape[0], -1)
                                                              .abs().sum(1) > 0])[-DEAD_WINDOW:]
            self._before = {n: [_local(p).detach().clone() for p in ps]
                            for n, ps in self.layers.items()}

    def _start_rows(self) -> None:
        for name, w in self.units.items():
            rows = _local(w).detach().float()
            if rows.numel():
                rows = rows.reshape(rows.shape[0], -1)  # (units, fan_in)
                self.start_rows[name] = float(rows.pow(2).sum(1).mean().sqrt())

    def _post(self, optimizer, args, kwargs) -> None:
        self.count += 1
        if self._before is None:
            return
        with torch.no_grad():
            for name, params in self.layers.items():
                diff = sum(float((_local(p).float() - b.float()).pow(2).sum())
                           for p, b in zip(params, self._before[name]))
                self.update[name].append(math.sqrt(diff))
        self._before = None
        if len(self.steps) > MAX_SAMPLES:  # keep every other sample: a bounded record
            for series in (self.steps, self.lr, *self.grad.values(), *self.weight.values(),
                           *self.update.values()):
                del series[1::2]
            self.every *= 2

    def summary(self) -> dict:
        """JSON-ready figures for RunRecord.layer_health (layers in model order; layers
        that never had a gradient here, such as another pipeline stage's, left out)."""
        dead = {n: (1.0 - float(torch.stack(r).any(0).float().mean()) if r else None)
                for n, r in self.recent.items()}
        return {"every": self.every, "steps": list(self.steps), "lr": list(self.lr),
                "layers": {n: {"grad": self.grad[n], "weight": self.weight[n],
                               "update": self.update[n][:len(self.grad[n])],
                               "dead_units": dead.get(n)}
                           for n in self.layers if n in self.with_grad},
                "start_rows": {n: r for n, r in self.start_rows.items() if n in self.with_grad}}


def _median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if math.isfinite(x))
    return xs[len(xs) // 2] if xs else float("nan")


def update_ratio(layer: dict) -> float:
    """Median over the sampled steps that moved the layer of |update| / |weight| (steps
    without a gradient, e.g. after its units died, say nothing about the step size)."""
    return _median([u / w for u, w in zip(layer["update"], layer["weight"]) if w > 0 and u > 0])


def _lr_text(health: dict) -> str:
    lr = health.get("lr") or []
    return f"{lr[0]:.3g}" if lr and math.isfinite(lr[0]) else "the current rate"


def _exploding(health: dict) -> list[Finding]:
    for name, layer in health["layers"].items():
        bad = [g for g in layer["grad"] if not math.isfinite(g) or g > EXPLODING_NORM]
        if bad:
            return [Finding("exploding_gradients", "error",
                            f"layer {name}'s gradient norm reached {max(bad):.3g} (sampled "
                            f"every {health['every']} steps; above {EXPLODING_NORM:g} explodes)",
                            "clip gradients and lower the learning rate: "
                            "optimizer=Adam(learning_rate=3e-4, clipnorm=1.0)", impact=0.6)]
    return []


def _vanishing(health: dict) -> list[Finding]:
    norms = [(n, _median(l["grad"])) for n, l in health["layers"].items() if l["grad"]]
    if len(norms) < 3 or not all(math.isfinite(g) for _, g in norms):
        return []
    (first, g0), (last, g1) = norms[0], norms[-1]
    if g1 <= 0 or g0 / g1 >= VANISHING_RATIO:
        return []
    return [Finding("vanishing_gradients", "warning",
                    f"the first layer ({first}) gets a gradient {g0 / g1:.2g}x the last "
                    f"layer's ({last}: {g0:.2g} vs {g1:.2g}) through {len(norms)} layers",
                    "use relu activations (Dense(..., activation='relu')) instead of "
                    "sigmoid/tanh in deep stacks, or add BatchNormalization() between layers",
                    impact=0.7)]


def _dead(health: dict) -> list[Finding]:
    dead = {n: l["dead_units"] for n, l in health["layers"].items()
            if l.get("dead_units") is not None and l["dead_units"] >= DEAD_UNIT_SHARE}
    if not dead:
        return []
    name, share = next(iter(dead.items()))  # the first dead layer cuts off those after it
    grads = health["layers"][name]["grad"]
    if grads and grads[0] == 0:  # no gradient from the first step: the start killed them
        when = "dead from the first step: the initial weights and biases put their inputs below 0"
        fix = (f"re-initialise layer {name}: Dense(..., kernel_initializer='he_normal', "
               "bias_initializer='zeros'), or use activation='leaky_relu'")
    else:
        when = "alive at the start, they died in training: large steps pushed their inputs below 0"
        lrs = [x for x in health.get("lr") or [] if math.isfinite(x) and x > 0]
        lower = (f"learning_rate={max(lrs) / 5:.2g} instead of {max(lrs):.3g}" if lrs
                 else "optimizer=Adam(learning_rate=1e-3)")
        fix = (f"lower the learning rate 3-10x (e.g. {lower}), or use "
               "activation='leaky_relu'")
    return [Finding("dead_units", "warning",
                    f"{share:.0%} of layer {name}'s units got no gradient in the last "
                    f"{DEAD_WINDOW} sampled steps (dead ReLUs, {when})", fix, impact=0.7)]


def _lr_scale(health: dict) -> list[Finding]:
    ratios = {n: update_ratio(l) for n, l in health["layers"].items() if l["update"]}
    ratios = {n: r for n, r in ratios.items() if math.isfinite(r) and r > 0}
    if not ratios:
        return []  # no layer moved: dead units or zero gradients, not the step size
    med = _median(list(ratios.values()))
    lr = _lr_text(health)
    if med < RATIO_LOW:
        return [Finding("lr_too_low", "warning",
                        f"each step changes the weights by {med:.2g} of their size (median "
                        f"over layers; about 1e-3 trains well) at learning rate {lr}",
                        "raise the learning rate about 10-100x, e.g. "
                        "optimizer=Adam(learning_rate=1e-3)", impact=0.75)]
    if med > RATIO_HIGH:
        return [Finding("lr_too_high", "error",
                        f"each step changes the weights by {med:.2g} of their size (median "
                        f"over layers; about 1e-3 trains well) at learning rate {lr}",
                        "lower the learning rate 10-100x, e.g. "
                        "optimizer=Adam(learning_rate=3e-4)", impact=0.8)]
    return []


def check_gradients(health: dict) -> list[Finding]:
    """Findings from RunRecord.layer_health; empty when nothing was measured. Dead units
    and vanishing gradients explain small updates, so they silence the lr_too_low check."""
    if not health or not health.get("layers"):
        return []
    cut = _vanishing(health) + _dead(health)
    lr = [f for f in _lr_scale(health) if not (cut and f.kind == "lr_too_low")]
    if any(f.kind == "lr_too_high" for f in lr):  # huge steps kill units: a symptom then
        cut = [replace(f, impact=0.3) if f.kind == "dead_units" else f for f in cut]
    return _exploding(health) + lr + cut
