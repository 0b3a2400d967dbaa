"""The process topology of a hybrid run: data x pipeline x tensor parallel degrees.

`ParallelDims` is checked before any process group exists; `build_mesh()` then slices the
world into a named DeviceMesh ("pp", "dp", "tp"). Ranks are laid out with tensor parallel
innermost (neighbouring ranks, the most talkative pair, share a host) and pipeline
outermost, as in torchtitan:

    world 8, pp=2 dp=2 tp=2:   rank = pp_idx * (dp*tp) + dp_idx * tp + tp_idx

Example:
    dims = ParallelDims(dp=2, tp=2, world_size=4)
    mesh = dims.build_mesh("cpu")          # every rank, after init_process_group
    tp_group = mesh["tp"].get_group()
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.distributed as dist
from torch import nn

MESH_DIM_NAMES = ("pp", "dp", "tp")


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of each kind of parallelism; their product is the world size.

    Attributes:
        dp: data-parallel replicas (each reads its own shard of the batch).
        tp: tensor-parallel degree (each layer's weights split over tp ranks).
        pp: pipeline-parallel degree (the layer stack cut into pp stages).
        world_size: number of processes; defaults to dp * tp * pp.
    """
    dp: int = 1
    tp: int = 1
    pp: int = 1
    world_size: int | None = None

    def __post_init__(self):
        for name in ("dp", "tp", "pp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelDims.{name} must be an integer >= 1, got {value!r}")
        product = self.dp * self.tp * self.pp
        if self.world_size is None:
            object.__setattr__(self, "world_size", product)
        elif product != self.world_size:
            raise ValueError(self._mismatch_message())

    def _mismatch_message(self) -> str:
        ws = self.world_size
        fixes = []
        for name in ("dp", "tp", "pp"):
            others = self.dp * self.tp * self.pp // getattr(self, name)
            if ws % others == 0:
                fixes.append(f"{name}={ws // others}")
        hint = (f"change one degree: {' or '.join(fixes)}" if fixes else
                f"choose degrees whose product is {ws}, or run on "
                f"{self.dp * self.tp * self.pp} processes")
        return (f"dp={self.dp} x tp={self.tp} x pp={self.pp} = {self.dp * self.tp * self.pp} "
                f"does not match the world size {ws}; {hint}")

    @classmethod
    def infer(cls, world_size: int, dp: int | None = None, tp: int = 1,
              pp: int = 1) -> "ParallelDims":
        """Fill in `dp` as world_size / (tp * pp) when it is None.

        Example:
            ParallelDims.infer(4, tp=2)   # dp=2
        """
        if dp is None:
            if world_size % (tp * pp):
                raise ValueError(
                    f"world size {world_size} is not divisible by tp={tp} x pp={pp}; run on a "
                    f"multiple of {tp * pp} processes or lower the tensor/pipeline degree")
            dp = world_size // (tp * pp)
        return cls(dp=dp, tp=tp, pp=pp, world_size=world_size)

    def coords(self, rank: int) -> dict[str, int]:
        """This rank's index along each dim, e.g. {"pp": 0, "dp": 1, "tp": 0}."""
        return {"pp": rank // (self.dp * self.tp), "dp": (rank // self.tp) % self.dp,
                "tp": rank % self.tp}

    def rank_of(self, pp: int = 0, dp: int = 0, tp: int = 0) -> int:
        """Global rank at the given coordinates."""
        return pp * self.dp * self.tp + dp * self.tp + tp

    def build_mesh(self, device_type: str = "cpu"):
        """A DeviceMesh of shape (pp, dp, tp) with dims named "pp", "dp", "tp".

        Every rank must call it (it creates one process group per mesh dimension slice).
        """
        from torch.distributed.device_mesh import init_device_mesh
        if dist.get_world_size() != self.world_size:
            raise ValueError(f"ParallelDims expects {self.world_size} processes but the process "
                             f"group has {dist.get_world_size()}; start "
                             f"{self.world_size} ranks or change the degrees")
        return init_device_mesh(device_type, (self.pp, self.dp, self.tp),
                                mesh_dim_names=MESH_DIM_NAMES)


def checkpoint_blocks(module: nn.Module) -> list[str]:
    """Recompute activations in backward for each block of `module`, in place.

    Blocks are the members of a `blocks` ModuleList (GPT-like models) or the children with
    parameters of an `nn.Sequential`. The block's `forward` is wrapped with
    torch.utils.checkpoint (non-reentrant), so state-dict names do not change.

    Returns:
        The names of the wrapped blocks.
    """
    if isinstance(getattr(module, "blocks", None), nn.ModuleList):
        targets = [(f"blocks.{i}", b) for i, b in enumerate(module.blocks)]
    elif isinstance(module, nn.Sequential):
        targets = [(n, m) for n, m in module.named_children()
                   if next(m.parameters(), None) is not None]
    else:
        targets = []
    for _, block in targets:
        wrap_forward_with_checkpoint(block)
    return [n for n, _ in targets]


def wrap_forward_with_checkpoint(block: nn.Module) -> None:
    """Make `block(x)` run under torch.utils.checkpoint (idempotent)."""
    from torch.utils.checkpoint import checkpoint
    if getattr(block, "_bigtrain_checkpointed", False):
        return
    inner = block.forward

    def forward(*args, **kwargs):
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward
    block._bigtrain_checkpointed = True
