"""Keras 3's RMSprop and Adagrad, written with torch._foreach ops.

Their formulas differ from torch's (epsilon inside the square root; RMSprop's lr inside its
momentum), so torch's kernels cannot run them: each line of the rule is one torch._foreach op
over a param group, or one tensor at a time where a group mixes DTensors and plain tensors.
They subclass torch.optim.RMSprop / Adagrad and keep their arguments and state names, so
checkpoints and strategies treat them as those classes.
"""
from __future__ import annotations

import torch


class _GroupSteps:
    """`step` of the Keras rules written with torch._foreach ops (RMSprop, Adagrad): per
    param group, `_state_lists(group, params)` gives the lists `_update(group, *lists)` reads,
    one op per line over the group, or one tensor at a time where the group mixes DTensors
    and plain tensors (`foreach` None: chosen so)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} (Keras's rule) does not support "
                                   "sparse gradients")
            lists = self._state_lists(group, params)
            foreach = group["foreach"]
            if foreach is None:
                from bigtrain.parallel.lazy_types import is_dtensor  # lazy, as kernel_options
                sharded = [is_dtensor(p) for p in params]
                foreach = all(sharded) or not any(sharded)
            if foreach:
                self._update(group, *lists)
            else:
                for one in zip(*lists):
                    self._update(group, *([t] for t in one))
        return loss


class RMSprop(_GroupSteps, torch.optim.RMSprop):
    """RMSprop as Keras 3 computes it, with torch.optim.RMSprop's arguments and state names
    (alpha is Keras's rho):

        v = rho * v + (1 - rho) * g^2                    (state "square_avg")
        a = rho * a + (1 - rho) * g                      ("grad_avg", centered only)
        inc = lr * g / sqrt(v - a^2 + eps)               (torch: g / (sqrt(v - a^2) + eps))
        m = momentum * m + inc; p -= m                   ("momentum_buffer"; torch keeps lr
                                                          out of m) -- or p -= inc

    `foreach` (default: on unless the list mixes DTensors and plain tensors) runs each line
    as one torch._foreach op over the group; off, the same ops run one tensor at a time.
    """

    def __init__(self, params, lr=1e-3, alpha=0.9, eps=1e-7, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False):
        if capturable or differentiable:
            raise ValueError("bigtrain's Keras RMSprop has no capturable or differentiable "
                             "mode; pass torch.optim.RMSprop for those")
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, foreach=foreach,
                         maximize=maximize)

    def _state_lists(self, group, params):
        """(params, grads, square_avgs, grad_avgs, momentum_buffers, steps); the last three
        hold None where centered / momentum are off."""
        out = [params, [p.grad for p in params], [], [], [], []]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["momentum"] > 0:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                if group["centered"]:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            out[2].append(state["square_avg"])
            out[3].append(state.get("grad_avg"))
            out[4].append(state.get("momentum_buffer"))
            out[5].append(state["step"])
        return out

    @staticmethod
    def _update(group, params, grads, square_avgs, grad_avgs, momentum_buffers, steps):
        rho, eps, lr = group["alpha"], group["eps"], float(group["lr"])
        torch._foreach_add_(steps, 1.0)
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        if group["weight_decay"]:  # torch's L2 term (Keras's decay is in UpdateRules)
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        torch._foreach_mul_(square_avgs, rho)
        torch._foreach_addcmul_(square_avgs, grads, grads, value=1.0 - rho)
        if group["centered"]:
            torch._foreach_mul_(grad_avgs, rho)
            torch._foreach_add_(grad_avgs, grads, alpha=1.0 - rho)
            denom = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1.0)
            torch._foreach_add_(denom, eps)
        else:
            denom = torch._foreach_add(square_avgs, eps)
        torch._foreach_sqrt_(denom)
        if group["momentum"] > 0:
            torch._foreach_mul_(momentum_buffers, group["momentum"])
            torch._foreach_addcdiv_(momentum_buffers, grads, denom, value=lr)
            torch._foreach_sub_(params, momentum_buffers)
        else:
            torch._foreach_addcdiv_(params, grads, denom, value=-lr)


class Adagrad(_GroupSteps, torch.optim.Adagrad):
    """Adagrad as Keras 3 computes it, with torch.optim.Adagrad's arguments and state
    ("sum" starts at initial_accumulator_value):

        sum += g^2;  p -= lr * g / sqrt(sum + eps)        (torch: g / (sqrt(sum) + eps))

    One torch._foreach op per line over the group, or one tensor at a time where the list
    mixes DTensors and plain tensors. Keras has no lr_decay; torch's L2 weight_decay is kept
    (Keras's decoupled decay is in UpdateRules).
    """

    def __init__(self, params, lr=1e-3, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0.1, eps=1e-7, foreach=None, maximize=False):
        if lr_decay:
            raise ValueError("bigtrain's Keras Adagrad has no lr_decay (Keras neither); pass "
                             "torch.optim.Adagrad for it")
        super().__init__(params, lr=lr, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps,
                         foreach=foreach, maximize=maximize)

    def _state_lists(self, group, params):
        """(params, grads, sums, steps)."""
        for p in params:  # torch fills the state in __init__; a later group may lack it
            if "sum" not in self.state[p]:
                self.state[p]["sum"] = torch.full_like(p, group["initial_accumulator_value"])
                self.state[p]["step"] = torch.zeros((), dtype=torch.float32)
        return (params, [p.grad for p in params], [self.state[p]["sum"] for p in params],
                [self.state[p]["step"] for p in params])

    @staticmethod
    def _update(group, params, grads, sums, steps):
        torch._foreach_add_(steps, 1.0)
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        torch._foreach_addcmul_(sums, grads, grads, value=1.0)
        denom = torch._foreach_add(sums, group["eps"])
        torch._foreach_sqrt_(denom)
        torch._foreach_addcdiv_(params, grads, denom, value=-float(group["lr"]))
