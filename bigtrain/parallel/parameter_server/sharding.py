"""How parameters are cut into shards ("pieces") and spread over the parameter servers.

Every rank computes the same plan from the model's parameter names and shapes, so no plan is
ever sent. A tensor larger than one server's fair share (total bytes / servers) is split by
rows (dim 0) into `servers` near-equal row ranges; then pieces are placed largest first on
the server holding the fewest bytes (longest-processing-time rule), which keeps servers
within one piece of each other in bytes.

Example:
    plan = build_plan([("emb.weight", (1000, 8), True), ("fc.weight", (1, 8), False)],
                      servers=2, itemsize=4)
    plan.server_bytes()          # [16000, 16032]-ish: the table is split in two
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamInfo:
    """One model parameter as the plan sees it.

    Attributes:
        name: the module's parameter name ("deep.0.weight").
        shape: full shape.
        sparse: True for an embedding table (rows pulled and pushed by id).
    """
    name: str
    shape: tuple[int, ...]
    sparse: bool

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_numel(self) -> int:
        """Elements per row (1 for a scalar or a vector)."""
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1


@dataclass(frozen=True)
class Piece:
    """A row range of one parameter, owned by one server; the unit of versioning and locks.

    Attributes:
        index: position in `ShardPlan.pieces`.
        param: index into `ShardPlan.params`.
        start, stop: row range [start, stop) of the parameter (dim 0; scalars use 0..1).
        server: 0-based server index owning this piece.
    """
    index: int
    param: int
    start: int
    stop: int
    server: int

    def describe(self, plan: "ShardPlan") -> str:
        info = plan.params[self.param]
        whole = self.start == 0 and self.stop == info.rows
        return info.name if whole else f"{info.name}[{self.start}:{self.stop}]"


@dataclass(frozen=True)
class ShardPlan:
    """The parameters and their pieces; identical on every rank."""
    params: tuple[ParamInfo, ...]
    pieces: tuple[Piece, ...]
    servers: int

    def piece_shape(self, piece: Piece) -> tuple[int, ...]:
        shape = self.params[piece.param].shape
        return (piece.stop - piece.start,) + tuple(shape[1:]) if shape else ()

    def piece_numel(self, piece: Piece) -> int:
        return math.prod(self.piece_shape(piece))

    def server_pieces(self, server: int) -> list[Piece]:
        return [p for p in self.pieces if p.server == server]

    def server_sparse_params(self, server: int) -> list[int]:
        """Indices of sparse parameters with at least one piece on `server`, in order."""
        return sorted({p.param for p in self.server_pieces(server) if self.params[p.param].sparse})

    def param_pieces(self, param: int) -> list[Piece]:
        return sorted((p for p in self.pieces if p.param == param), key=lambda p: p.start)

    def server_bytes(self, itemsize: int = 4) -> list[int]:
        out = [0] * self.servers
        for p in self.pieces:
            out[p.server] += self.piece_numel(p) * itemsize
        return out

    def signature(self) -> list[str]:
        """Strings that identify the plan (stored in checkpoints to refuse a mismatch)."""
        return [f"{self.params[p.param].name}:{self.params[p.param].shape}:{p.start}:{p.stop}"
                f":{p.server}" for p in self.pieces]

    def row_owner(self, param: int, ids: torch.Tensor) -> tuple[torch.Tensor, list[Piece]]:
        """For row ids of `param`, the position of their piece in `param_pieces(param)`."""
        pieces = self.param_pieces(param)
        starts = torch.tensor([p.start for p in pieces[1:]], dtype=ids.dtype)
        return torch.bucketize(ids, starts, right=True), pieces


def build_plan(params: list[tuple[str, tuple[int, ...], bool]], servers: int,
               itemsize: int = 4) -> ShardPlan:
    """Split and place parameters over `servers`, balanced by bytes.

    Args:
        params: (name, shape, sparse) per parameter, in the module's order.
        servers: number of parameter servers (>= 1).
        itemsize: bytes per element (only the balance depends on it).

    Returns:
        The ShardPlan; pieces are listed parameter by parameter, rows ascending.
    """
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    infos = tuple(ParamInfo(n, tuple(int(s) for s in shape), bool(sp)) for n, shape, sp in params)
    total = sum(math.prod(i.shape) for i in infos) * itemsize
    fair = total / servers
    ranges = []  # (param, start, stop)
    for k, info in enumerate(infos):
        nbytes = math.prod(info.shape) * itemsize
        parts = min(info.rows, servers) if nbytes > fair and servers > 1 else 1
        bounds = [round(j * info.rows / parts) for j in range(parts + 1)]
        ranges += [(k, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    load = [0] * servers
    owner = {}
    by_size = sorted(range(len(ranges)), key=lambda j: -(ranges[j][2] - ranges[j][1])
                     * infos[ranges[j][0]].row_numel)
    for j in by_size:
        k, a, b = ranges[j]
        s = min(range(servers), key=lambda t: (load[t], t))
        owner[j] = s
        load[s] += (b - a) * infos[k].row_numel * itemsize
    pieces = tuple(Piece(j, k, a, b, owner[j]) for j, (k, a, b) in enumerate(ranges))
    return ShardPlan(infos, pieces, servers)


def rows_view(t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of `t` (a scalar is treated as one row)."""
    return t.reshape(1)[start:stop] if t.dim() == 0 else t[start:stop]
