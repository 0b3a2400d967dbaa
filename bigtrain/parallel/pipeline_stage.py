"""The pieces a pipeline rank is built from: a stage module, the last stage's result
broadcast, the timing of the stages' compute (the measured bubble), and the batch helpers.

bigtrain.parallel.pipeline_runtime puts them together; see bigtrain.parallel.pipeline for
the data, loss and tied-weight conventions.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from bigtrain.parallel.pipeline_partition import state_kept
from bigtrain.parallel.seeds import stream_seed
from bigtrain.parallel.slow_ranks import after_each

#: the methods of a torch PipelineStage that run one micro-batch's compute
CHUNKS = (("forward_one_chunk", 0), ("backward_one_chunk", 1), ("backward_weight_one_chunk", 1))
# output dtypes and ranks the per-step header broadcast can describe (broadcast_result)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
_MAX_DIMS = 8


def first_names(module: nn.Module) -> dict[str, str]:
    """{name of a parameter -> the first name of the same tensor} for the parameters the
    module reaches under several names (tied weights): `named_parameters` lists a shared
    tensor once, under its first name, and so does one process's optimizer state (the
    pipeline's checkpoints name optimizer state so, `Pipeline.checkpoint_names`)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return {k: v for k, v in out.items() if k != v}


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient. A stage sends the gradient of
    its input back to the previous stage as autograd made it, and the receiver's buffer
    copies its strides: a layer that reads its input transposed (a GRU after a Conv1D)
    gave a transposed gradient, which gloo's receive refuses ("input tensor has to be
    contiguous")."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class StageModule(nn.Module):
    """A run of consecutive layers of the original model; remembers their original names.

    Args:
        names: the layers' state-dict prefixes in the original model (e.g. "blocks.3").
        layers: the layer modules themselves (not copies).
    """

    def __init__(self, names: Sequence[str], layers: Sequence[nn.Module]):
        super().__init__()
        self.names = list(names)
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        if isinstance(x, torch.Tensor) and x.requires_grad:  # from the previous stage
            x = _ContiguousGrad.apply(x)
        for layer in self.layers:
            x = layer(x)
        if (isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad
                and torch.is_grad_enabled()):
            # a stage without trainable weights whose input needs no gradient (embedding and
            # first blocks frozen) gave the next stage an input without one, and torch's
            # zero-bubble schedule then split that stage's backward wrong (its weight
            # gradients came out 0.3 off one process): hand it a leaf that asks for one
            x = x.detach().requires_grad_()
        # a stage of view layers only (Flatten, Reshape) would hand the schedule a view of its
        # input; zero-bubble schedules detach stage outputs in place, which views refuse. An
        # output in another memory layout (Conv1D's, channels-last: a transposed view) kept it
        # through clone() and gloo sends contiguous tensors only
        if isinstance(x, torch.Tensor) and (x._is_view() or not x.is_contiguous()):
            return x.clone(memory_format=torch.contiguous_format)
        return x

    def original_name(self, key: str) -> str:
        """This stage's state-dict key "layers.<j>.<rest>" as the original model names it:
        "<name of layer j>.<rest>" (e.g. "layers.1.attn.q_proj.weight" -> "blocks.3.attn...")."""
        _, j, rest = key.split(".", 2)
        return f"{self.names[int(j)]}.{rest}"

    def checkpoint_targets(self) -> list[tuple[str, nn.Module]]:
        """The blocks activation checkpointing wraps: every layer that has parameters."""
        return [(n, m) for n, m in zip(self.names, self.layers)
                if next(m.parameters(), None) is not None]


def wrap_chunks(stages, wrap: Callable[[Callable, int], Callable]) -> None:
    """Replace each compute method of each PipelineStage (its `compute_chunks`, else
    CHUNKS) by `wrap(method, slot)`; slot 0 is forward, 1 backward."""
    for st in stages:
        for name, slot in getattr(st, "compute_chunks", CHUNKS):
            if hasattr(st, name):  # backward_weight_one_chunk: zero-bubble schedules only
                setattr(st, name, wrap(getattr(st, name), slot))


#: the PipelineStage method that runs a stage's forward once to learn the shapes it sends,
#: by torch version (2.13: `_forward_metadata_inference`; 2.6: `_shape_inference`)
METADATA_PASS = ("_forward_metadata_inference", "_shape_inference")
#: the PipelineStage method torch calls on every stage once all of its metadata passes are
#: done (2.13: after a backward pass through the forward pass's graph; 2.6 has neither)
METADATA_END = "_post_metadata_inference_cleanup"


def keep_state_in_metadata_pass(stages) -> None:
    """Make the stages' one-off metadata pass leave no trace: torch runs each stage's
    forward on the first micro-batch (later stages on uninitialised tensors) before the
    first step, which in training mode would move BatchNormalization's statistics and the
    dropout random stream away from what one process computes.

    torch 2.13 then runs a backward through that forward's graph, which saved BatchNorm's
    running statistics: restoring them between the two (an in-place copy, a new tensor
    version) failed that backward ("modified by an inplace operation"). So the state is
    taken when the first of this rank's stages starts its pass and put back when torch
    ends them all (`METADATA_END`); where torch has no such end, after each forward.
    """
    held = _HeldState([st.submod for st in stages], stages[0].device if stages else "cpu")
    for st in stages:
        name = next((n for n in METADATA_PASS if hasattr(st, n)), None)
        if name is None:  # torch-private; a version without it runs no such pass
            continue
        if hasattr(st, METADATA_END):
            setattr(st, name, held.taking(getattr(st, name)))
            setattr(st, METADATA_END, held.restoring(getattr(st, METADATA_END)))
        else:
            setattr(st, name, _state_kept_call(getattr(st, name), st.submod, st.device))


class _HeldState:
    """One `state_kept` over a rank's stage modules, held open across calls: entered by
    the first metadata pass, left (buffers and random streams put back) at its end."""

    def __init__(self, modules: Sequence[nn.Module], device):
        self.modules, self.device = list(modules), torch.device(device)
        self._open: contextlib.ExitStack | None = None

    def taking(self, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            if self._open is None:  # the state before any stage's pass
                self._open = contextlib.ExitStack()
                self._open.enter_context(state_kept(self.modules, self.device))
            return fn(*args, **kwargs)
        return call

    def restoring(self, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)  # frees the passes' graphs first
            finally:
                if self._open is not None:
                    held, self._open = self._open, None
                    held.close()
        return call


def _state_kept_call(fn: Callable, module: nn.Module, device) -> Callable:
    def call(*args, **kwargs):
        with state_kept([module], torch.device(device)):
            return fn(*args, **kwargs)
    return call


class ChunkTimer:
    """Stage compute against the schedule's wall time on the steps the step timer samples.

    On a timed step every chunk adds its own seconds to `busy` ([forward, backward]); the
    rest of the schedule's wall time is the bubble and the send/recv waits.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.busy: list[float] | None = None  # [forward, backward] s of a timed step
        self.timed: list[tuple[float, float]] = []  # (busy, schedule wall) s per timed step
        self._wrapped = False

    def clock(self) -> float:
        """perf_counter, after the device finished its queued work when this step is timed
        (on CPU ops are synchronous: no wait)."""
        if self.busy is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def add(self, slot: int, seconds: float) -> None:
        """Charge `seconds` to forward (0) or backward (1) on a timed step."""
        if self.busy is not None:
            self.busy[slot] += seconds

    def start(self, stages, on: bool) -> None:
        """Time this step's stage chunks or not; wraps the chunks on first use."""
        self.busy = [0.0, 0.0] if on else None
        if on and not self._wrapped:
            wrap_chunks(stages, self._timed_chunk)
            self._wrapped = True

    def _timed_chunk(self, fn, slot: int):
        """`fn` that adds its own seconds to `busy[slot]` on timed steps."""
        return after_each(fn, lambda seconds: self.add(slot, seconds), clock=self.clock)

    def stop(self, wall: float, timer) -> None:
        """Charge the stage compute of a timed step to forward/backward on the step timer
        (the rest of the schedule stays "other": idle) and keep (busy, wall) for `bubble`."""
        if self.busy is None:
            return
        fwd, bwd = self.busy
        self.busy = None
        timer.split_current("forward", fwd)
        timer.split_current("backward", bwd)
        self.timed.append((fwd + bwd, wall))

    def bubble(self) -> float | None:
        """Measured idle share of the schedule on this rank: 1 - stage compute / schedule
        wall time, over the timed steps (the first, with the schedule's shape exchange and
        warm-up, left out when others exist). Idle includes send/recv waits; None before
        any timed step."""
        steps = self.timed[1:] if len(self.timed) > 1 else self.timed
        wall = sum(w for _, w in steps)
        if wall <= 0:
            return None
        return min(1.0, max(0.0, 1.0 - sum(b for b, _ in steps) / wall))


def broadcast_result(out, loss, src: int, group, device: torch.device):
    """The last stage's output (and mean loss) on every pipeline rank.

    Two broadcasts from `src` over `group`: a header of 3 + _MAX_DIMS float64 (loss, dtype
    code, ndim, shape), then the output itself. Pickled metadata (broadcast_object_list:
    three collectives and a pickle every step) is only the fallback for outputs the header
    cannot describe.

    Args:
        out: the output on the last stage, None elsewhere.
        loss: the mean loss (float32 scalar) on the last stage, None elsewhere.

    Returns:
        (output, loss) on every pipeline rank; loss is a float32 scalar tensor.
    """
    header = torch.zeros(3 + _MAX_DIMS, dtype=torch.float64, device=device)
    if out is not None:
        fits = out.dtype in _DTYPES and out.dim() <= _MAX_DIMS
        header[1], header[2] = (_DTYPES.index(out.dtype) if fits else -1), out.dim()
        if fits:
            header[3:3 + out.dim()] = torch.tensor(out.shape, dtype=torch.float64)
        if loss is not None:
            header[0] = loss
    dist.broadcast(header, src=src, group=group)
    h = header.tolist()
    code, ndim = int(h[1]), int(h[2])
    if code >= 0:
        shape, dtype = tuple(int(d) for d in h[3:3 + ndim]), _DTYPES[code]
    else:
        meta = [(tuple(out.shape), out.dtype) if out is not None else None]
        dist.broadcast_object_list(meta, src=src, group=group)
        shape, dtype = meta[0]
    buf = out.detach() if out is not None else torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(buf, src=src, group=group)
    # float32 -> float64 -> float32 is exact: every rank returns the last stage's loss
    return buf, (loss if loss is not None else header[0].to(torch.float32))


def single_input(x):
    """The input tensor of a single-input model (a 1-tuple is unwrapped)."""
    if isinstance(x, (tuple, list)):
        if len(x) != 1:
            raise ValueError(f"Pipeline feeds one input tensor to the first stage, got "
                             f"{len(x)} inputs; merge them into one tensor (or one layer)")
        return x[0]
    return x


def cat_batches(parts):
    """Concatenate micro-batches' tensors (or tuples of tensors, element-wise)."""
    if isinstance(parts[0], (tuple, list)):
        return type(parts[0])(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


def take_rows(y, ids):
    """Rows `ids` (an index tensor or a slice) of a tensor (or of each tensor of a tuple)."""
    if isinstance(y, (tuple, list)):
        return type(y)(t[ids] for t in y)
    return y[ids]


def stage_seed(base: int, pp_rank: int, replica: int) -> int:
    """The seed of the random stream of pipeline rank `pp_rank` in data-parallel replica
    `replica`, from the run's `base` (bigtrain.parallel.seeds.draw_seed): a different stream
    per stage and replica, the same on a stage's tensor-parallel ranks, which must drop the
    same units of their replicated activations.

    Example:
        torch.manual_seed(stage_seed(draw_seed(), pp_rank=1, replica=0))
    """
    return stream_seed(base, pp_rank, replica)
