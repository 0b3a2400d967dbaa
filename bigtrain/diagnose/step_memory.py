"""What one training step holds in memory: saved activations and gradients, measured.

While a fit keeps a run record, the phase timer (bigtrain.diagnose.step_timer) opens a
StepMemory for the fit's first optimizer step (which the step-time means leave out, so the
probe's own cost does not show in them) and closes it at the step's end:

- activations: torch.autograd.graph.saved_tensors_hooks sees every tensor autograd saves for
  backward. Live bytes rise when a tensor is saved and fall when backward unpacks it; the
  peak is kept. Parameters (leaves that require grad) and views of them (`weight.T`) are
  not activations and are skipped; a tensor saved twice (ReLU's output, then the next
  Linear's input) counts once; a DTensor counts its local part.
- gradients: a global optimizer step pre-hook (torch.optim.optimizer.
  register_optimizer_step_pre_hook) reads the gradients the optimizer is about to apply,
  i.e. after backward and gradient sync, before `zero_grad` drops them: local bytes of the
  gradients of the parameters it updates (the most over the optimizers stepped, so ZeRO-1's
  wrapper, which sees every gradient, wins over its local shard optimizer).

Example:
    mem = StepMemory()
    mem.open(); loss = net(x).sum(); loss.backward(); opt.step(); mem.close()
    mem.activations_peak, mem.grads       # bytes, or None when nothing was seen
"""
from __future__ import annotations

import os
import sys

import torch

try:  # a global hook: it sees the optimizer a strategy wraps or builds itself
    from torch.optim.optimizer import register_optimizer_step_pre_hook
except ImportError:  # pragma: no cover - torch < 2.0
    register_optimizer_step_pre_hook = None


def local_bytes(t: torch.Tensor) -> int:
    """Bytes of `t` this process holds (a DTensor's local shard)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def optimizer_grad_bytes(optimizer) -> int:
    """Local bytes of the gradients `optimizer` would apply now (each parameter once)."""
    seen, total = set(), 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen and p.grad is not None:
                seen.add(id(p))
                total += local_bytes(p.grad)
    return total


def _is_parameter(t: torch.Tensor) -> bool:
    """A parameter, or a view of one (a layer's `weight.T`): weights, not activations."""
    base = t._base if t._base is not None else t
    return base.is_leaf and base.requires_grad


class StepMemory:
    """Saved-activation peak and gradient bytes of the step between `open` and `close`.

    Attributes:
        activations_peak: most bytes autograd held saved for backward at once (None:
            nothing was saved, or never opened).
        grads: gradient bytes at the optimizer step (None: no optimizer stepped here).
    """

    def __init__(self):
        self.activations_peak: int | None = None
        self.grads: int | None = None
        self.is_open = False
        self._live: dict[tuple, int] = {}  # saved tensor -> bytes, until unpacked
        self._now = 0
        self._hooks = None
        self._handle = None

    def open(self) -> None:
        """Start watching (on the thread that runs the forward pass)."""
        if self.is_open:
            return
        self.is_open = True
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        if register_optimizer_step_pre_hook is not None:
            self._handle = register_optimizer_step_pre_hook(self._pre_step)

    def close(self) -> None:
        """Stop watching; the figures stay."""
        if not self.is_open:
            return
        self.is_open = False
        self._hooks.__exit__(None, None, None)
        if self._handle is not None:
            self._handle.remove()
        self._hooks = self._handle = None
        self._live.clear()

    def _pack(self, t: torch.Tensor):
        try:
            if not _is_parameter(t):
                local = t.to_local() if hasattr(t, "to_local") else t
                key = (local.data_ptr(), local.numel(), local.dtype)
                if key not in self._live:
                    self._live[key] = local.numel() * local.element_size()
                    self._now += self._live[key]
                    self.activations_peak = max(self.activations_peak or 0, self._now)
                return t, key
        except Exception:  # noqa: BLE001 - a figure, never a reason for training to fail
            pass
        return t, None

    def _unpack(self, packed):
        t, key = packed
        self._now -= self._live.pop(key, 0)
        return t

    def _pre_step(self, optimizer, args, kwargs) -> None:
        try:
            self.grads = max(self.grads or 0, optimizer_grad_bytes(optimizer))
        except Exception:  # noqa: BLE001 - as above
            pass


def process_rss() -> int | None:
    """Resident set size of this process now (bytes): /proc/self/statm on Linux, else the
    peak resident size from getrusage; None where neither exists."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource  # not on Windows
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, else KiB
    except (ImportError, OSError):
        return None
