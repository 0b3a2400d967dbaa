"""Which torch optimizer kernel runs, chosen from what the parameters are.

torch.optim has three implementations of most optimizers: `fused` (one kernel per step,
3-6x faster on CPU), `foreach` (one op per tensor list) and a per-parameter loop. Sharded
strategies hand the optimizer DTensors, and not every kernel takes them:

    parameters                          kernel        why
    plain dense floating tensors        fused         fastest
    all DTensors (zero2/3, offload)     foreach/loop  DTensor has no rule for _fused_sgd_
                                                      (torch's default: foreach on GPUs)
    DTensors mixed with plain tensors   loop          fused and foreach ops refuse a list
    (tensor parallel, a Linear left                   that mixes torch.Tensor and DTensor
    replicated)

Arguments the user set (`fused=`, `foreach=`) are kept as given.

Below: the optimizers that give the Keras names Keras 3's arithmetic, as torch optimizers
that run on these kernels (Adam, AdamW: torch's Adam kernels, fused included,
with Keras's epsilon; RMSprop: Keras's formula in torch._foreach ops).
"""
from __future__ import annotations

import inspect
import math

import torch


def _is_dtensor(t: torch.Tensor) -> bool:
    from bigtrain.parallel.lazy_types import is_dtensor
    return is_dtensor(t)


def kernel_options(cls: type, params: list, kwargs: dict) -> dict:
    """`fused` / `foreach` keyword arguments for `cls(params, **kwargs)` (see module docstring).

    Args:
        cls: a torch.optim.Optimizer subclass.
        params: tensors, or param-group dicts with a "params" list.
        kwargs: the arguments the optimizer is built with; keys set there are left alone.

    Example:
        kernel_options(torch.optim.SGD, [torch.nn.Parameter(torch.zeros(2))], {})
        # {"fused": True}
    """
    accepted = inspect.signature(cls).parameters
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])
               if isinstance(p, torch.Tensor)]
    sharded = [_is_dtensor(p) for p in tensors]
    out = {}
    if any(sharded):
        if "fused" in accepted and "fused" not in kwargs:
            out["fused"] = False
        if not all(sharded) and "foreach" in accepted and "foreach" not in kwargs:
            out["foreach"] = False
    elif ("fused" in accepted and "fused" not in kwargs
          and all(not p.is_sparse and p.is_floating_point() for p in tensors)):
        out["fused"] = True
    return out


# Keras's update rules where they differ from torch's (bigtrain.optimizers builds these for
# the Keras names; a torch class the user passes keeps torch's rule). They subclass the torch
# class of the same name, so strategies that rebuild an optimizer from its class and defaults
# (ZeRO-1), code that asks `issubclass(cls, torch.optim.Adam)` and checkpoints that record
# the optimizer's class name treat them as that class.

def _steps_taken(optimizer: torch.optim.Optimizer, group: dict) -> int:
    """Steps this group has taken, from its first parameter's torch `step` state."""
    for p in group["params"]:
        step = optimizer.state.get(p, {}).get("step")
        if step is not None:
            return int(step)
    return 0


def _keras_adam_epsilon(optimizer, args, kwargs) -> None:
    """Step pre-hook: torch's eps for the coming step t such that torch's Adam is Keras's.

    Keras 3 adds epsilon to the un-corrected sqrt(v): p -= alpha * m / (sqrt(v) + eps) with
    alpha = lr * sqrt(1 - b2^t) / (1 - b1^t); torch adds it to sqrt(v / (1 - b2^t)). The
    two agree when torch's eps is keras_eps / sqrt(1 - b2^t).
    """
    for group in optimizer.param_groups:
        keras_eps = group.setdefault("keras_epsilon", group["eps"])
        # the step count is kept on the host ("keras_step", saved with the group): reading
        # torch's step tensor every step would wait for an accelerator's queued work
        t = group.get("keras_step")
        t = (_steps_taken(optimizer, group) if t is None else int(t)) + 1
        group["keras_step"] = t
        group["eps"] = keras_eps / math.sqrt(1.0 - float(group["betas"][1]) ** t)


def _recount_steps(optimizer) -> None:
    """After a load: each group's host step count from the loaded torch `step` state (a
    checkpoint written before "keras_step" existed, or whose count an optimizer's zero step
    on load overwrote, would restart epsilon's schedule)."""
    for group in optimizer.param_groups:
        group["keras_step"] = _steps_taken(optimizer, group)


class _KerasEpsilon:
    """Adam with Keras's epsilon, on torch's kernels (fused on CPU): each param group keeps
    the Keras epsilon under "keras_epsilon" (saved and restored by state_dict) and its
    "eps" is set before every step by `_keras_adam_epsilon`."""

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._hook()

    def _hook(self) -> None:
        self.register_step_pre_hook(_keras_adam_epsilon)
        self.register_load_state_dict_post_hook(_recount_steps)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("keras_epsilon", group["eps"])

    def __setstate__(self, state: dict) -> None:
        unpickled = "_optimizer_step_pre_hooks" not in self.__dict__  # else load_state_dict
        super().__setstate__(state)
        if unpickled:  # pickling drops hooks
            self._hook()


class Adam(_KerasEpsilon, torch.optim.Adam):
    """torch.optim.Adam (same arguments and state) with Keras 3's epsilon."""
    __signature__ = inspect.signature(torch.optim.Adam)


class AdamW(_KerasEpsilon, torch.optim.AdamW):
    """torch.optim.AdamW (same arguments and state) with Keras 3's epsilon."""
    __signature__ = inspect.signature(torch.optim.AdamW)


def _keras_momentum(optimizer, args, kwargs) -> None:
    """Step pre-hook of `SGD`: where a group's lr changed since its last step, rescale its
    momentum buffers by old_lr / new_lr, so that lr * buffer stays Keras's momentum m."""
    for group in optimizer.param_groups:
        lr, last = float(group["lr"]), group.get("keras_last_lr")
        group["keras_last_lr"] = lr
        if last is None or last == lr or lr == 0.0 or not group["momentum"]:
            continue
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(last / lr)


class SGD(torch.optim.SGD):
    """torch.optim.SGD (same arguments and state) with Keras 3's momentum under a changing
    learning rate. Keras keeps lr inside its momentum (m = momentum * m - lr * g; p += m),
    torch outside it (b = momentum * b + g; p -= lr * b): the same while lr is constant,
    apart once a schedule or a callback changes it. A step pre-hook (only where momentum is
    on) rescales the buffers when lr changes, so that -lr * b is Keras's m; nesterov
    follows. bigtrain.optimizers builds it for SGD with momentum."""
    __signature__ = inspect.signature(torch.optim.SGD)

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._hook()

    def _hook(self) -> None:
        if any(group["momentum"] for group in self.param_groups):
            self.register_step_pre_hook(_keras_momentum)

    def __setstate__(self, state: dict) -> None:
        unpickled = "_optimizer_step_pre_hooks" not in self.__dict__  # else load_state_dict
        super().__setstate__(state)
        if unpickled:  # pickling drops hooks
            self._hook()


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
                sharded = [_is_dtensor(p) for p in params]
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


# Keras optimizers that torch does not have. Each runs per tensor with plain torch ops, so
# DTensor parameters (sharded strategies) work and Lamb's norms cover the whole variable.

class _PerTensor(torch.optim.Optimizer):
    """Base of the per-tensor Keras rules: `step` calls `_update(group, p, grad, state)`
    for every parameter with a gradient; subclasses set `_init_state(group, p)`."""

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
                self._update(group, p, p.grad.to(p.dtype), state)
        return loss


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

    def _update(self, group, p, g, state):
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

    def _update(self, group, p, g, state):
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

    def _update(self, group, p, g, state):
        b1, b2 = group["betas"]
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.add_((g - m) * (1 - b1))
        v.add_((g * g - v) * (1 - b2))
        update = (m / (1.0 - b1 ** t)) / (torch.sqrt(v / (1.0 - b2 ** t)) + group["eps"])
        w_norm, u_norm = torch.sqrt(torch.sum(p * p)), torch.sqrt(torch.sum(update * update))
        one = torch.ones_like(w_norm)
        ratio = torch.where(w_norm > 0, torch.where(u_norm > 0, w_norm / u_norm, one), one)
        p.sub_(ratio * float(group["lr"]) * update)
