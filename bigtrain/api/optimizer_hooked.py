"""Keras 3's Adam, AdamW and SGD as torch's own optimizer classes plus a step pre-hook.

Where Keras's update differs from torch's only in a constant that moves with the step or the
learning rate (Adam's epsilon, SGD's momentum under a changing lr), a pre-hook adjusts torch's
settings or state before each step, and the step itself is torch's kernel (fused included, see
optimizer_kernels.py). bigtrain.optimizers builds these for the Keras names; a torch class the
user passes keeps torch's rule. They subclass the torch class of the same name, so strategies
that rebuild an optimizer from its class and defaults (ZeRO-1), code that asks
`issubclass(cls, torch.optim.Adam)` and checkpoints that record the optimizer's class name
treat them as that class.
"""
from __future__ import annotations

import inspect
import math

import torch


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
    momentum buffers by old_lr / new_lr, so that lr * buffer stays Keras's momentum m.

    At lr = 0 Keras still moves: m = momentum * m; p += m (nesterov: p += momentum * m),
    which torch's step cannot do (its buffer would need scaling by old_lr / 0). `_coast`
    takes that step, the group keeping its last non-zero lr ("keras_last_lr") as the
    buffers' scale, and torch's step leaves the group alone."""
    for group in optimizer.param_groups:
        lr, last = float(group["lr"]), group.get("keras_last_lr")
        if not group["momentum"]:
            continue
        if lr == 0.0:
            _coast(optimizer, group, last)
            continue
        group["keras_last_lr"] = lr
        if last is None or last == lr:
            continue
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(last / lr)


@torch.no_grad()
def _coast(optimizer, group: dict, scale: float | None) -> None:
    """Keras's zero-lr step for `group`, whose buffers b hold m = -scale * b: b *= momentum
    (so m = momentum * m) and p += m (nesterov: p += momentum * m). Its gradients are set
    aside until the post-hook `_restore_grads`: torch's step skips a parameter without one
    (it would add the gradient to the buffer; at lr = 0 Keras's update does not read it)."""
    mu = float(group["momentum"])
    hidden = optimizer.__dict__.setdefault("_hidden_grads", [])
    for p in group["params"]:
        if p.grad is None:
            continue
        hidden.append((p, p.grad))
        p.grad = None
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is None or scale is None:  # Keras's m is still 0: nothing moves
            continue
        buf.mul_(mu)
        p.add_(buf, alpha=-scale * (mu if group["nesterov"] else 1.0))


def _restore_grads(optimizer, args, kwargs) -> None:
    """Step post-hook of `SGD`: give back the gradients `_coast` set aside."""
    for p, grad in optimizer.__dict__.pop("_hidden_grads", ()):
        p.grad = grad


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
            self.register_step_post_hook(_restore_grads)

    def __setstate__(self, state: dict) -> None:
        unpickled = "_optimizer_step_pre_hooks" not in self.__dict__  # else load_state_dict
        super().__setstate__(state)
        if unpickled:  # pickling drops hooks
            self._hook()
