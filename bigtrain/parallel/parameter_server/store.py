"""One server's pieces: their values, optimizers, versions, locks and checkpoints.

Each piece (a row range of a parameter, see sharding.py) is its own `nn.Parameter` with its
own optimizer built by the user's optimizer factory, its own lock and a version that counts
the updates applied to it. Element-wise optimizers (SGD, Adam, Adagrad, ...) give exactly
the same numbers split this way as on the whole tensor.

Embedding pieces receive sparse gradients (row ids, rows). torch's own optimizers that take
sparse gradients (SparseAdam, Adagrad, SGD without momentum) get them as they are; any other
optimizer (subclasses included: bigtrain's Keras-rule Adagrad refuses them) gets them
densified, which is what single-process training would compute. A push that carries a
table's gradient steps every piece of that table on this server, an empty gradient where
none of its rows was looked up: in one process the whole table steps, so momentum moves
untouched rows and Adam's step count advances for them too.

Example:
    store = ShardStore(plan, server=0, full={"fc.weight": w, ...})
    store.build_optimizers(lambda ps: torch.optim.Adam(ps, lr=1e-3))
    store.apply(store.decode_push(index, values))
"""
from __future__ import annotations

import os
import threading

import torch
from torch import nn

from bigtrain.parallel.parameter_server import protocol as P
from bigtrain.parallel.parameter_server.sharding import ShardPlan, rows_view

CHECKPOINT_FORMAT = 1


class PushError(ValueError):
    """A worker sent something this server cannot apply; the message names the tensor."""


def _accepts_sparse(opt: torch.optim.Optimizer) -> bool:
    """True where `opt` takes sparse gradients. Exact classes: a subclass may change the
    update rule (bigtrain's Keras-rule Adagrad derives from torch's but refuses them)."""
    groups, kind = opt.param_groups, type(opt)
    if kind is torch.optim.SparseAdam:
        return True
    if kind is torch.optim.Adagrad:
        return all(g.get("weight_decay", 0) == 0 for g in groups)
    if kind is torch.optim.SGD:  # the fused kernel refuses sparse gradients
        return all(g.get("momentum", 0) == 0 and g.get("weight_decay", 0) == 0
                   and not g.get("fused") for g in groups)
    return False


def steps_rows_alone(make_optimizer) -> bool:
    """True where the update rule of `make_optimizer(params)` moves each row of a tensor as
    it would move that row alone (element-wise rules: SGD, Adam, Adagrad, Lion, ...), so
    pieces split by rows step exactly like the whole tensor. Rules that use a whole
    variable's norms (Lamb's trust ratio) do not. Checked with two steps on a 2x2 probe.

    Example:
        steps_rows_alone(lambda ps: torch.optim.Adam(ps, lr=0.1))   # True
    """
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    g = torch.tensor([[0.3, -0.1], [2.0, 0.7]])
    tensors = [nn.Parameter(w.clone())] + [nn.Parameter(w[i:i + 1].clone()) for i in range(2)]
    try:
        optims = [make_optimizer([t]) for t in tensors]
        for _ in range(2):
            for t, opt, grad in zip(tensors, optims, [g, g[:1], g[1:]]):
                t.grad = grad.to_sparse() if _accepts_sparse(opt) else grad.clone()  # as apply
                opt.step()
    except (RuntimeError, TypeError, ValueError):
        return True  # no step on a probe (LBFGS wants a closure): the real step will say why
    whole, rows = tensors[0], tensors[1:]
    return torch.allclose(whole.detach(), torch.cat([r.detach() for r in rows]),
                          rtol=1e-6, atol=1e-7)


class ShardStore:
    """Values, optimizer state and versions of the pieces one server owns.

    Args:
        plan: the shard plan (same on every rank).
        server: this server's 0-based index.
        full: the initial full parameters by name (CPU tensors).
    """

    def __init__(self, plan: ShardPlan, server: int, full: dict[str, torch.Tensor]):
        self.plan = plan
        self.pieces = plan.server_pieces(server)
        self.sparse_params = plan.server_sparse_params(server)
        # in the piece's own shape: a 0-dim parameter stays 0-dim (its gradient arrives so,
        # and its optimizer then steps it as one process does)
        self.tensors = [nn.Parameter(rows_view(full[plan.params[p.param].name].detach().cpu(),
                                               p.start, p.stop).reshape(plan.piece_shape(p))
                                     .clone()) for p in self.pieces]
        self.versions = [0] * len(self.pieces)
        self.locks = [threading.Lock() for _ in self.pieces]
        self.optims: list[torch.optim.Optimizer] = []
        self.sparse_ok: list[bool] = []
        self.updates = 0  # update events (one per applied push, or per BSP clock)
        self._save_lock = threading.Lock()

    def build_optimizers(self, make_optimizer) -> None:
        """One optimizer per piece, from the user's factory (`make_optimizer(params)`)."""
        self.optims = [make_optimizer([t]) for t in self.tensors]
        self.sparse_ok = [_accepts_sparse(o) for o in self.optims]

    # ---- requests ------------------------------------------------------------------------
    def decode_push(self, index: torch.Tensor, values: torch.Tensor) -> dict[int, torch.Tensor]:
        """Gradients by local piece position from a PUSH payload (see protocol.py).

        Raises:
            PushError: a gradient has the wrong number of elements or row ids out of range.
        """
        n, ns = len(self.pieces), len(self.sparse_params)
        if index.numel() < n + 2 * ns:
            raise PushError(f"malformed push: index has {index.numel()} entries, expected at "
                            f"least {n + 2 * ns} (is the worker's model the same as the servers'?)")
        counts = index[:n].tolist()
        pairs = index[n:n + 2 * ns].view(-1, 2).tolist()
        ids = index[n + 2 * ns:].long()
        grads: dict[int, torch.Tensor] = {}
        off = 0
        for pos, (piece, c) in enumerate(zip(self.pieces, counts)):
            if c == 0:
                continue
            want = self.plan.piece_numel(piece)
            if c != want:
                raise PushError(f"gradient for {piece.describe(self.plan)!r} has {c} elements, "
                                f"expected {want} (shape {self.plan.piece_shape(piece)}); "
                                "check that the worker's model matches the servers'")
            grads[pos] = values[off:off + c].view(self.plan.piece_shape(piece))
            off += c
        id_off = 0
        for k, (nrows, nvals) in zip(self.sparse_params, pairs):
            if nrows == P.NO_GRAD and nvals == 0:
                continue  # the worker's step did not use this table
            info = self.plan.params[k]
            if nvals != nrows * info.row_numel:
                raise PushError(f"sparse gradient for {info.name!r} has {nvals} values for "
                                f"{nrows} rows, expected rows of shape {info.shape[1:]}")
            rows = values[off:off + nvals].view((nrows,) + info.shape[1:])
            self._add_rows(grads, k, ids[id_off:id_off + nrows], rows)
            off, id_off = off + nvals, id_off + nrows
        if off != values.numel() or id_off != ids.numel():
            raise PushError(f"malformed push: {values.numel()} values and {ids.numel()} ids sent, "
                            f"the index describes {off} and {id_off}")
        return grads

    def _pieces_holding(self, param: int, ids: torch.Tensor) -> list:
        """(position, piece, mask of the `ids` it holds) for each piece of parameter `param`
        on this server; PushError naming ids that none of them holds."""
        found, covered = [], torch.zeros_like(ids, dtype=torch.bool)
        for pos, piece in enumerate(self.pieces):
            if piece.param == param:
                mask = (ids >= piece.start) & (ids < piece.stop)
                covered |= mask
                found.append((pos, piece, mask))
        if not bool(covered.all()):
            bad = ids[~covered][:5].tolist()
            raise PushError(f"row ids {bad} of {self.plan.params[param].name!r} are not held by "
                            "this server (ids out of range for the embedding table?)")
        return found

    def _add_rows(self, grads, param: int, ids: torch.Tensor, rows: torch.Tensor) -> None:
        """Every piece of `param` here gets a sparse gradient of the rows it holds, an empty
        one where it holds none (the table steps whole, see the module docstring)."""
        for pos, piece, mask in self._pieces_holding(param, ids):
            grads[pos] = torch.sparse_coo_tensor((ids[mask] - piece.start)[None], rows[mask],
                                                 self.plan.piece_shape(piece),
                                                 check_invariants=False)  # ids checked above

    def apply(self, grads: dict[int, torch.Tensor], scale: float = 1.0) -> None:
        """One optimizer step on each piece that has a gradient (each under its own lock)."""
        for pos in sorted(grads):
            g = grads[pos]
            if g.is_sparse:  # sums of pushes arrive uncoalesced
                g = g.coalesce() if self.sparse_ok[pos] else g.to_dense()
            if scale != 1.0:
                g = g * scale
            with self.locks[pos]:
                t = self.tensors[pos]
                t.grad = g.to(t.dtype)
                self.optims[pos].step()
                t.grad = None
                self.versions[pos] += 1

    def assign(self, values: torch.Tensor) -> None:
        """Overwrite every piece with `values` (all pieces, flattened, in order)."""
        want = sum(self.plan.piece_numel(p) for p in self.pieces)
        if values.numel() != want:
            raise PushError(f"new values have {values.numel()} elements, this server's pieces "
                            f"({', '.join(p.describe(self.plan) for p in self.pieces)}) "
                            f"hold {want}")
        off = 0
        for pos, t in enumerate(self.tensors):
            with self.locks[pos], torch.no_grad():
                t.copy_(values[off:off + t.numel()].view(t.shape))
                self.versions[pos] += 1
            off += t.numel()

    def read(self, pos: int) -> tuple[int, torch.Tensor]:
        """(version, flat copy) of a piece, consistent under its lock."""
        with self.locks[pos]:
            return self.versions[pos], self.tensors[pos].detach().reshape(-1).clone()

    def gather_rows(self, param: int, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (global row ids) of parameter `param`, flattened; PushError if not here."""
        info = self.plan.params[param]
        out = torch.empty((ids.numel(), info.row_numel), dtype=self.tensors[0].dtype)
        for pos, piece, mask in self._pieces_holding(param, ids):
            with self.locks[pos]:
                out[mask] = self.tensors[pos].detach().reshape(-1, info.row_numel)[
                    ids[mask] - piece.start]
        return out.reshape(-1)

    # ---- checkpoints ---------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write values, optimizer states and versions atomically (tmp file + rename)."""
        with self._save_lock:
            for lock in self.locks:
                lock.acquire()
            try:
                state = {"format": CHECKPOINT_FORMAT, "plan": self.plan.signature(),
                         "updates": self.updates,
                         "versions": torch.tensor(self.versions, dtype=torch.int64),
                         "pieces": {str(i): t.detach().clone() for i, t in enumerate(self.tensors)},
                         "optim": {str(i): o.state_dict() for i, o in enumerate(self.optims)}}
            finally:
                for lock in self.locks:
                    lock.release()
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp"
            torch.save(state, tmp)
            os.replace(tmp, path)

    def load(self, path: str) -> None:
        """Restore a checkpoint written by `save` (weights_only: nothing is unpickled)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("plan") != self.plan.signature():
            raise ValueError(f"parameter server checkpoint {path!r} was written for a different "
                             "model or number of servers; use a new checkpoint_dir or the "
                             "original configuration")
        with torch.no_grad():
            for i, t in enumerate(self.tensors):
                t.copy_(state["pieces"][str(i)])
        for i, o in enumerate(self.optims):
            o.load_state_dict(state["optim"][str(i)])
        self.versions = [int(v) for v in state["versions"]]
        self.updates = int(state["updates"])
