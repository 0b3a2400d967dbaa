"""Random streams inside tensor-parallel regions: each rank's shard draws its own masks.

The ranks of a tensor-parallel group share one random stream (bigtrain.parallel.seeds), as
dropout on a replicated activation (the residual stream after a row-wise all-reduce) must
drop the same positions on every rank, or the replicas of that activation drift apart.
Between a column-wise Linear and its row-wise partner each rank holds a different slice of
the features (its heads, its quarter of an MLP's hidden), and a shared stream would drop
the same local positions on every slice: rank 1's mask a copy of rank 0's. One process
draws them independently. Megatron's rule fixes it, and so does this module:

    replicated region   (x, the residual stream)     the shared stream, equal on all ranks
    split region        colwise output .. rowwise input (attention probabilities of the
                        rank's heads, the MLP hidden): a stream of this tensor-parallel rank

    x -> [colwise Linear] -> enter: draw from the shared stream, seed a rank stream from
         that draw and the tp rank -> gelu, dropout (rank's own mask) -> exit: the shared
         stream comes back -> [rowwise Linear] -> all-reduce -> dropout (shared mask)

A layer that splits itself (bigtrain.parallel.layer_split, e.g. MultiHeadAttention) runs
its whole forward in the rank stream: its randomness is on its own heads.

Why a draw at each entry and not one per-rank generator kept aside (Megatron's tracker):
the rank stream is a function of the shared stream's state, so activation checkpointing,
which restores the shared state before it recomputes a block, recomputes the same masks
without knowing about this module; and every tp rank advances the shared stream by the
same one draw, so the replicated masks stay equal. Nothing runs in eval mode.

Example:
    apply_tp(model, mesh["tp"], plan)     # calls split_streams(model, plan, mesh["tp"])
"""
from __future__ import annotations

import hashlib
from typing import Mapping

import torch
from torch import nn

from bigtrain.parallel.seeds import stream_seed


class SplitStream:
    """The random stream of one tensor-parallel rank inside split regions of one module."""

    def __init__(self, tp_rank: int):
        self.tp_rank = tp_rank
        self._gen: torch.Generator | None = None  # the generator forked, while inside
        self._shared: torch.Tensor | None = None  # its shared state to come back to

    @property
    def inside(self) -> bool:
        return self._shared is not None

    def enter(self, device: torch.device) -> None:
        """Switch `device`'s default generator to this rank's stream (no-op when inside)."""
        if self._shared is not None:
            return
        gen = _default_generator(device)
        if gen is None:  # a device type without per-device generators: masks stay shared
            return
        seed = stream_seed(_digest(gen.get_state()), self.tp_rank)
        torch.empty(1, device=device).uniform_(generator=gen)  # shared stream: one draw on
        self._gen, self._shared = gen, gen.get_state()          # every rank of the group
        gen.manual_seed(seed)

    def exit(self) -> None:
        """Back to the shared stream, where the entry left it (no-op when outside)."""
        if self._shared is not None:
            self._gen.set_state(self._shared)
            self._gen, self._shared = None, None


def split_streams(module: nn.Module, plan: Mapping[str, str], tp_mesh) -> SplitStream | None:
    """Give `module`'s split regions a per-rank random stream (module docstring), with hooks.

    Args:
        module: the model part `plan` shards (after parallelize_module / tp_apply).
        plan: Linear (or self-splitting layer) name -> style, as apply_tp used it.
        tp_mesh: the 1-D tensor-parallel mesh.

    Returns:
        The stream (for tests), or None when nothing is split.
    """
    if tp_mesh.size() < 2 or not any(s in ("colwise", "split") for s in plan.values()):
        return None
    stream = SplitStream(tp_mesh.get_local_rank())

    def enter_after(m, args, out):  # a colwise Linear's output is split
        if m.training:
            stream.enter(_device(out, m))

    def enter_before(m, args):  # a layer that splits itself: its whole forward
        if m.training:
            stream.enter(_device(args, m))

    def leave(*_):
        stream.exit()

    for name, style in plan.items():
        sub = module.get_submodule(name)
        if style == "colwise":
            sub.register_forward_hook(enter_after)
        elif style == "rowwise":  # its input is the last split tensor
            sub.register_forward_pre_hook(leave)
        elif style == "split":
            sub.register_forward_pre_hook(enter_before)
            sub.register_forward_hook(leave, always_call=True)
    # a colwise Linear whose partner never ran (an override, an exception) closes here
    module.register_forward_hook(leave, always_call=True)
    return stream


def _default_generator(device: torch.device) -> torch.Generator | None:
    """The generator dropout on `device` draws from (torch's default for that device)."""
    if device.type == "cpu":
        return torch.default_generator
    backend = getattr(torch, device.type, None)
    gens = getattr(backend, "default_generators", ())  # cuda, xpu: one per device
    if not gens:
        return None
    index = device.index if device.index is not None else backend.current_device()
    return gens[index] if index < len(gens) else None


def _device(value, module: nn.Module) -> torch.device:
    """The device of the first tensor in `value` (an output or the args), else of `module`."""
    if isinstance(value, torch.Tensor):
        return value.device
    for v in value if isinstance(value, (tuple, list)) else ():
        if isinstance(v, torch.Tensor):
            return v.device
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _digest(state: torch.Tensor) -> int:
    """A 64-bit number from a generator's state bytes (equal states, equal numbers)."""
    return int.from_bytes(hashlib.blake2b(state.numpy().tobytes(), digest_size=8).digest(),
                          "little")
