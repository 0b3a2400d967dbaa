"""Keras 3 optimizers that torch does not have: Lion, Ftrl and Lamb.

Each runs per tensor with plain torch ops, so DTensor parameters (sharded strategies) work and
Lamb's norms cover the whole variable. `_PerTensor` holds the loop over parameters and the
state set-up; each subclass writes its rule once, for one tensor.
"""
from __future__ import annotations

import torch


class _PerTensor(torch.optim.Optimizer):
    """Base of the per-tensor Keras rules: `step` calls `_update(group, p, grad, state, t)`
    for every parameter with a gradient, t the steps it has taken (this one included);
    subclasses set `_init_state(group, p)`."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse "
                                       "gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state.update(self._init_state(group, p))
                state["step"] += 1
                self._update(group, p, p.grad.to(p.dtype), state, self._count(p, state["step"]))
        return loss

    def _count(self, p, step: torch.Tensor) -> int:
        """Steps `p` has taken, this one included (`step`, just incremented), counted on the
        host: reading `step` (on the parameter's device after a load there) for every tensor
        of every step would wait for the device's queued work each time. It is read once
        where the tensor was replaced or written since our last increment (a load: its
        version counter moved by more than that increment)."""
        counts = self.__dict__.setdefault("_host_steps", {})  # p -> (step tensor, version, t)
        seen = counts.get(p)
        if seen is not None and seen[0] is step and step._version == seen[1] + 1:
            t = seen[2] + 1
        else:
            t = int(round(float(step)))
        counts[p] = (step, step._version, t)
        return t


class Lion(_PerTensor):
    """Keras 3's Lion (Chen et al. 2023):

        p -= lr * sign(beta_1 * m + (1 - beta_1) * g)
        m = beta_2 * m + (1 - beta_2) * g                  (state "exp_avg")
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99)):
        if not 0.0 < betas[0] <= 1.0:
            raise ValueError(f"Lion beta_1 must be in (0, 1], got {betas[0]} (0 makes it "
                             "sign SGD)")
        super().__init__(params, {"lr": lr, "betas": tuple(betas)})

    def _init_state(self, group, p):
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _update(self, group, p, g, state, t):
        b1, b2 = group["betas"]
        m = state["exp_avg"]
        p.sub_(torch.sign(m * b1 + g * (1.0 - b1)), alpha=float(group["lr"]))
        m.mul_(b2).add_(g * (1.0 - b2))


class Ftrl(_PerTensor):
    """Keras 3's Ftrl (McMahan et al. 2013), per weight, with n the accumulator ("accum",
    starting at initial_accumulator_value) and z the linear term ("linear"):

        n' = n + g^2;  z += g + 2 * l2_shrinkage * p - (n'^-k - n^-k) / lr * p
        p = (clip(z, -l1, l1) - z) / (n'^-k / lr + 2 * (l2 + beta / (2 lr)));  n = n'

    where k is lr_power (Keras's learning_rate_power, <= 0).
    """

    def __init__(self, params, lr=1e-3, lr_power=-0.5, initial_accumulator_value=0.1,
                 l1=0.0, l2=0.0, l2_shrinkage=0.0, beta=0.0):
        for name, value in (("initial_accumulator_value", initial_accumulator_value),
                            ("l1_regularization_strength", l1),
                            ("l2_regularization_strength", l2),
                            ("l2_shrinkage_regularization_strength", l2_shrinkage)):
            if value < 0.0:
                raise ValueError(f"Ftrl {name} must be >= 0, got {value}")
        if lr_power > 0.0:
            raise ValueError(f"Ftrl learning_rate_power must be <= 0, got {lr_power}")
        super().__init__(params, {"lr": lr, "lr_power": lr_power,
                                  "initial_accumulator_value": initial_accumulator_value,
                                  "l1": l1, "l2": l2, "l2_shrinkage": l2_shrinkage,
                                  "beta": beta})

    def _init_state(self, group, p):
        return {"accum": torch.full_like(p, group["initial_accumulator_value"]),
                "linear": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _update(self, group, p, g, state, t):
        lr, k = float(group["lr"]), -group["lr_power"]
        if lr == 0.0:  # the rule divides by lr; a zero-lr step (how torch creates the state
            return     # of an optimizer it loads into) leaves everything as it is
        l2 = group["l2"] + group["beta"] / (2.0 * lr)
        accum, linear = state["accum"], state["linear"]
        new_accum = accum + g * g
        linear.add_(g + 2 * group["l2_shrinkage"] * p
                    - (new_accum.pow(k) - accum.pow(k)) / lr * p)
        quadratic = new_accum.pow(k) / lr + 2 * l2
        clipped = torch.clamp(linear, -group["l1"], group["l1"])
        p.copy_((clipped - linear) / quadratic)
        accum.copy_(new_accum)


class Lamb(_PerTensor):
    """Keras 3's Lamb (You et al. 2019): Adam's bias-corrected step
    u = m_hat / (sqrt(v_hat) + eps), scaled per variable by the trust ratio |p| / |u|
    (1 where either norm is 0): p -= ratio * lr * u. States "exp_avg", "exp_avg_sq"."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-7):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    def _init_state(self, group, p):
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _update(self, group, p, g, state, t):
        b1, b2 = group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.add_((g - m) * (1 - b1))
        v.add_((g * g - v) * (1 - b2))
        update = (m / (1.0 - b1 ** t)) / (torch.sqrt(v / (1.0 - b2 ** t)) + group["eps"])
        w_norm, u_norm = torch.sqrt(torch.sum(p * p)), torch.sqrt(torch.sum(update * update))
        one = torch.ones_like(w_norm)
        ratio = torch.where(w_norm > 0, torch.where(u_norm > 0, w_norm / u_norm, one), one)
        p.sub_(ratio * float(group["lr"]) * update)
