"""The kernels one training step of a module runs, listed without running them.

The step-time model needs more than a FLOP count: on a CPU a batch of 32 through a
1000-wide layer, the weight gradient of a skinny matmul or a GELU over a few hundred
thousand elements run far from the matmul peak, and every kernel call costs some
microseconds whatever its size. So the planner lists the calls themselves: one forward of
`batch` samples, a loss over the output and the backward, run under `FakeTensorMode`
(shapes, strides and dtypes only: no memory, no arithmetic) on CPU fake tensors, so the
kernel choices are the CPU's (scaled-dot-product attention stays one fused call rather
than the meta device's decomposition), and the user's module is neither copied nor changed.
`bigtrain.plan.kernels` times each distinct call on this host.

The loss is not the planner's to know: it is costed as a softmax cross-entropy over the
output's last axis (what classifiers and language models train with), or a sum when the
output has one column. A cheaper loss (mean squared error) makes the figure slightly high.

Example:
    from torch import nn
    from bigtrain.plan.optrace import trace_step
    calls = trace_step(nn.Linear(16, 4), (torch.zeros(1, 16),), batch=32)
    [c.name for c in calls][:3]        # e.g. ['aten.t.default', 'aten.addmm.default', ...]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry


@dataclass(frozen=True)
class TensorShape:
    """A tensor argument of a traced call: what it takes to build one like it."""
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the elements the tensor covers (an expanded view counts once)."""
        if not all(self.shape):
            return 0
        span = 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride))
        return span * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class OpCall:
    """One kernel call of the step.

    Attributes:
        func: the aten overload called.
        args: positional arguments, tensors as TensorShape.
        kwargs: keyword arguments as (name, value) pairs, tensors as TensorShape.
        flops: FLOPs torch's counter gives the call (matmuls, convolutions, attention; 0
            for the rest).
        nbytes: bytes of its tensor inputs and outputs (what a memory-bound call streams;
            0 for a view, which moves no data).
        in_bytes: bytes of its tensor inputs alone (what it reads that was written before).
        out: the output when it is one tensor (None otherwise), for a run into a reused
            buffer.
    """
    func: object
    args: tuple
    kwargs: tuple
    flops: float
    nbytes: float
    in_bytes: float = 0.0
    out: TensorShape | None = None

    @property
    def name(self) -> str:
        return str(self.func)

    @property
    def key(self) -> str:
        """Identifies calls that cost the same: the op and every argument's shape, stride,
        dtype and value."""
        return f"{self.func}{self.args!r}{self.kwargs!r}"


def _shape_of(x):
    return TensorShape(tuple(x.shape), tuple(x.stride()), x.dtype) \
        if isinstance(x, torch.Tensor) else x


def _bytes(tree) -> float:
    total = [0.0]

    def add(x):
        if isinstance(x, torch.Tensor):
            total[0] += TensorShape(tuple(x.shape), tuple(x.stride()), x.dtype).nbytes
        return x
    tree_map(add, tree)
    return total[0]


class _Recorder(TorchDispatchMode):
    """Keeps an OpCall for every aten call dispatched under it."""

    def __init__(self):
        super().__init__()
        self.calls: list[OpCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace == "prim":  # fake tensors' own queries (prim.device): no kernel
            return out
        count = flop_registry.get(func._overloadpacket)
        try:
            flops = float(count(*args, **kwargs, out_val=out)) if count else 0.0
        except Exception:  # noqa: BLE001 -- a counter that does not know this overload
            flops = 0.0
        views = func.is_view or func._overloadpacket is torch.ops.aten._unsafe_view
        reads, writes = (0.0, 0.0) if views else (_bytes((args, kwargs)), _bytes(out))
        self.calls.append(OpCall(func, tree_map(_shape_of, tuple(args)),
                                 tuple(sorted(tree_map(_shape_of, kwargs).items())),
                                 flops, reads + writes, reads,
                                 _shape_of(out) if isinstance(out, torch.Tensor) else None))
        return out


def _stand_in_loss(out) -> torch.Tensor:
    """Softmax cross-entropy over the last axis of the first floating output (or its sum
    when that axis has one element): the loss a step is costed with."""
    leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    floats = [t for t in leaves if t.is_floating_point() and t.requires_grad]
    if not floats:
        raise ValueError("the module's output holds no floating tensor that needs a gradient")
    y = floats[0]
    if y.dim() >= 2 and y.shape[-1] > 1:
        logits = y.reshape(-1, y.shape[-1])  # (samples x positions, classes)
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))
    return y.sum()


def trace_step(module: nn.Module, example: tuple, batch: int) -> list[OpCall] | None:
    """The kernel calls of one training step of `batch` samples: forward, the stand-in
    loss, backward (every parameter's gradient). None when the module cannot run on fake
    tensors (data-dependent control flow, `.item()`) or holds non-CPU tensors.

    Args:
        module: the single-device model (not changed, not run).
        example: one sample, a tuple of tensors with a leading batch dimension of 1.
        batch: samples of the step (the rank's local batch).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    named = list(module.named_parameters()) + list(module.named_buffers())
    if any(t.device.type != "cpu" for _, t in named) or \
            any(x.device.type != "cpu" for x in example):
        return None
    recorder = _Recorder()
    try:
        with torch.random.fork_rng(devices=[]), FakeTensorMode():
            state = {k: torch.empty_strided(v.shape, v.stride(), dtype=v.dtype)
                     for k, v in named}
            params = [state[k].requires_grad_(v.requires_grad) for k, v in
                      module.named_parameters()]
            xs = tuple(torch.zeros((batch,) + tuple(x.shape[1:]), dtype=x.dtype)
                       for x in example)
            with recorder:
                loss = _stand_in_loss(functional_call(module, state, xs))
                wanted = [p for p in params if p.requires_grad]
                torch.autograd.grad(loss, wanted, allow_unused=True)
    except Exception:  # noqa: BLE001 -- any op fake tensors cannot run: no trace
        return None
    return recorder.calls
