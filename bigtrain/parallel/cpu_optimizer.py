"""Optimizer on the host (ZeRO-Offload style) for data parallel: the fp32 master weights and
the optimizer state (Adam's m and v: 8 bytes per parameter) live in host memory; the compute
device keeps only the working weights and gradients.

One step, per rank, after the gradients were averaged (DDP's all-reduce during backward):

    device grads --copy--> host fp32 master grads      (pinned buffers when the device is CUDA)
    optimizer.step() on the host masters               (e.g. torch.optim.Adam, CPU kernels)
    host masters --copy--> device weights

    fit(..., strategy="ddp_cpu_optimizer", devices=2)
    fit(..., strategy=CpuOptimizerDataParallel())     # the same

On a CPU-only machine the copies are host-to-host, so nothing is saved, but the numbers are
those of plain "ddp" (a parity test holds them to 1e-5). Not yet supported: resuming such a
run from a torch.distributed.checkpoint checkpoint (the optimizer's parameters are the host
masters, not the module's parameters, so the checkpoint cannot name them).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from bigtrain.parallel.base import register
from bigtrain.parallel.data_parallel import DataParallel

MakeOptimizer = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def _host_copy(param: torch.Tensor, pin: bool) -> nn.Parameter:
    """An fp32 host copy of `param` (pinned when `pin`, so copies to the device are async)."""
    master = torch.empty(param.shape, dtype=torch.float32, device="cpu", pin_memory=pin)
    master.copy_(param.detach())
    return nn.Parameter(master)


class HostOptimizer:
    """Wraps an optimizer so that it steps fp32 master copies of the parameters on the host.

    It looks like a torch optimizer to the loop and callbacks (`step`, `zero_grad`,
    `param_groups`, `state`, `state_dict`, `load_state_dict`); learning-rate callbacks that
    edit `param_groups` edit the host optimizer's groups.

    Args:
        params: the module's (device) parameters; those without requires_grad are skipped.
        make_optimizer: builds the real optimizer over an iterable of parameters, e.g.
            `lambda ps: torch.optim.Adam(ps, lr=1e-3)`; it is given the host masters.
        pin_memory: pin the host buffers (default: when any parameter is on CUDA).

    Example:
        opt = HostOptimizer(model.parameters(), lambda ps: torch.optim.Adam(ps, lr=1e-3))
        loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, params: Iterable[nn.Parameter], make_optimizer: MakeOptimizer,
                 pin_memory: bool | None = None):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("HostOptimizer got no trainable parameters; check that the model "
                             "has parameters with requires_grad=True")
        cuda = any(p.is_cuda for p in self.params)
        self.pin = cuda if pin_memory is None else bool(pin_memory and torch.cuda.is_available())
        self.master = [_host_copy(p, self.pin) for p in self.params]
        self.optimizer = make_optimizer(self.master)
        self._cuda = cuda

    # ---- what the loop and callbacks read -------------------------------------------------
    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    # ---- one step -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Device grads -> host masters, host optimizer step, host masters -> device weights."""
        if closure is not None:
            raise ValueError("HostOptimizer.step does not take a closure (the loss would be "
                             "recomputed on the device); call step() after backward instead")
        for p, m in zip(self.params, self.master):
            if p.grad is None:
                m.grad = None
                continue
            if m.grad is None:  # buffers made once, reused every step
                m.grad = torch.empty(m.shape, dtype=m.dtype, pin_memory=self.pin)
            m.grad.copy_(p.grad, non_blocking=self.pin)
        if self._cuda:
            torch.cuda.synchronize()  # the non-blocking grad copies must land before the step
        self.optimizer.step()
        self.copy_masters_to_device()

    @torch.no_grad()
    def copy_masters_to_device(self) -> None:
        """Device weights := the host masters (after a step, or after the masters changed)."""
        for p, m in zip(self.params, self.master):
            p.copy_(m, non_blocking=self.pin)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the device gradients (the host grad buffers are overwritten every step)."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def host_bytes(self) -> int:
        """Bytes of host memory held: fp32 masters, their grads and the optimizer state."""
        total = sum(m.numel() * m.element_size() * (2 if m.grad is not None else 1)
                    for m in self.master)
        for st in self.optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
        return total

    def __repr__(self):
        return f"HostOptimizer({type(self.optimizer).__name__}, {len(self.master)} tensors)"


def setup_optimizer_on(device: str | None, module: nn.Module, make_optimizer: MakeOptimizer,
                       pin_memory: bool | None = None):
    """The optimizer for `module`: on the compute device (None) or on the host ("cpu").

    Args:
        device: None (the usual optimizer next to the weights) or "cpu" (HostOptimizer).
        module: the (possibly wrapped) module whose parameters are optimized.
        make_optimizer: optimizer factory over an iterable of parameters.
        pin_memory: passed to HostOptimizer.
    """
    if device is None:
        return make_optimizer(module.parameters())
    if device != "cpu":
        raise ValueError(f"optimizer_device must be None or 'cpu', got {device!r}")
    return HostOptimizer(module.parameters(), make_optimizer, pin_memory)


class CpuOptimizerDataParallel(DataParallel):
    """DDP whose optimizer steps fp32 master weights on the host (see the module docstring).

    Args:
        bucket_cap_mb: DDP gradient bucket size for the overlapped all-reduce.
        find_unused_parameters: set for models whose forward skips some parameters.
        pin_memory: pin the host buffers (default: when the device is CUDA).

    Example:
        fit(x, y, strategy=CpuOptimizerDataParallel(), devices=2)
    """

    name = "ddp_cpu_optimizer"
    supports_loss_scaling = False  # the host optimizer is not a GradScaler-aware optimizer

    def __init__(self, bucket_cap_mb: int = 25, find_unused_parameters: bool = False,
                 pin_memory: bool | None = None):
        super().__init__(bucket_cap_mb, find_unused_parameters)
        self.pin_memory = pin_memory

    def setup_optimizer(self, module, make_optimizer):
        return setup_optimizer_on("cpu", module, make_optimizer, self.pin_memory)

    def refuse_update_rules(self, rules) -> str | None:
        if rules.weight_decay and rules.exclude_from_decay is not None:
            return ("exclude_from_weight_decay: the host optimizer steps copies of the "
                    "weights, which the exclusion cannot name; use strategy='ddp' or "
                    "'fsdp_offload' (optimizer state on the host too), or drop the exclusion")
        return super().refuse_update_rules(rules)

    def describe(self) -> str:
        return f"ddp, optimizer on the host, bucket {self.bucket_cap_mb} MB"


register("ddp_cpu_optimizer", CpuOptimizerDataParallel)
