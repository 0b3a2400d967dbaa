"""The process topology of a run: data x pipeline x tensor parallel degrees, built once.

`ParallelDims` is checked before any process group exists; `Topology` (on every rank, after
init_process_group) slices the world into a named DeviceMesh ("pp", "dp", "tp") once and
hands out this rank's coordinates and groups to every technique
(bigtrain.parallel.parallelize). Ranks are laid out with tensor parallel innermost
(neighbouring ranks, the most talkative pair, share a host) and pipeline outermost, as in
torchtitan:

    world 8, pp=2 dp=2 tp=2:   rank = pp_idx * (dp*tp) + dp_idx * tp + tp_idx

Example:
    dims = ParallelDims(dp=2, tp=2, world_size=4)
    topo = Topology(dims, rank=dist.get_rank(), device_type="cpu")   # every rank
    topo.group("tp"), topo.coords["dp"]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

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

    def replica_batch(self, global_batch_size: int) -> int:
        """Samples per data-parallel replica; ValueError when the batch does not split."""
        if global_batch_size % self.dp:
            raise ValueError(f"global batch {global_batch_size} does not split over {self.dp} "
                             f"data-parallel replicas; use a batch size divisible by {self.dp}")
        return global_batch_size // self.dp

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


class Topology:
    """This rank's place on the ("pp", "dp", "tp") mesh: the mesh, built once, and the
    coordinates and process groups every technique asks for.

    Args:
        dims: the validated degrees.
        rank: this process's global rank.
        device_type: "cpu" or "cuda" (the mesh's device).
        distributed: False on a one-process run: no mesh, no groups (every degree is 1).

    Example:
        topo = Topology(ParallelDims.infer(4, tp=2), rank=1, device_type="cpu")
        topo.coords      # {"pp": 0, "dp": 0, "tp": 1}
        topo.group("dp") # the process group of this rank's data-parallel replicas
    """

    def __init__(self, dims: ParallelDims, rank: int, device_type: str = "cpu",
                 distributed: bool = True):
        self.dims, self.rank = dims, rank
        self.mesh = dims.build_mesh(device_type) if distributed else None
        self.coords = dims.coords(rank)

    def group(self, name: str):
        """The process group along mesh dimension `name` ("pp", "dp" or "tp") holding this
        rank; None on a one-process run."""
        return None if self.mesh is None else self.mesh[name].get_group()

    def sub_mesh(self, name: str):
        """The 1-D DeviceMesh along `name` (what DTensor's parallelize_module takes)."""
        return None if self.mesh is None else self.mesh[name]

    def data_shard(self) -> tuple[int, int]:
        """(index, count) of this rank's data shard: its replica along "dp"."""
        return (self.coords["dp"], self.dims.dp)

    def last_stage_rank(self) -> int:
        """Global rank of the last pipeline stage of this rank's (dp, tp) column."""
        return self.dims.rank_of(pp=self.dims.pp - 1, dp=self.coords["dp"],
                                 tp=self.coords["tp"])
