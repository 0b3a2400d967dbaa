"""The worker's side of the protocol: pull pieces and rows, push gradients, count bytes.

Requests go to every server first and replies are read afterwards, so servers work in
parallel. Payload tensors live on the CPU; values are copied to and from the worker's
device by the caller's tensors (`copy_`).

Example:
    client = WorkerClient(plan, rank=0, servers=[3], group=g, dtype=torch.float32)
    client.pull(params, clock=0)                     # dense pieces into the local tensors
    client.pull_rows(k, torch.tensor([4, 9]), table, clock=0)
    client.push({0: w.grad, k: table.grad}, clock=0)  # dense, or sparse COO rows
"""
from __future__ import annotations

import time

import torch

from bigtrain.parallel.parameter_server import protocol as P
from bigtrain.parallel.parameter_server.sharding import ShardPlan, rows_view


class WorkerClient:
    """Talks to the parameter servers for one worker rank.

    Args:
        plan: the shard plan.
        rank: this worker's global rank.
        servers: global ranks of the servers, by server index.
        group: process group for the point-to-point messages.
        dtype: dtype of parameter values on the wire (the model's parameter dtype).
    """

    def __init__(self, plan: ShardPlan, rank: int, servers: list[int], group,
                 dtype: torch.dtype):
        self.plan, self.rank, self.servers, self.group, self.dtype = (
            plan, rank, list(servers), group, dtype)
        self.versions = [-1] * len(plan.pieces)  # last version pulled, per global piece
        self.bytes_pushed = self.bytes_pulled = self.bytes_requested = 0  # payload + headers
        self.pushes = self.pulls = 0
        self.rows_pulled = 0
        self.wait_s = 0.0
        self.stal_max = self.stal_sum = self.stal_n = 0
        self.server_stal_max, self.server_stal_mean = 0, 0.0
        self.ended = 0  # from the replies: 1 + the last epoch a worker's stream ran out in
        self.applied = [0] * len(self.servers)  # updates each server applied, last reply
        self.finished = False

    def _fail(self, s: int, err: Exception) -> RuntimeError:
        return RuntimeError(
            f"parameter server {s} (rank {self.servers[s]}) stopped responding: {err}. The job "
            "cannot continue; restart it with the same checkpoint_dir to resume from the "
            "servers' last checkpoint")

    def _send(self, s: int, msgs) -> int:
        try:
            return P.send(msgs, self.servers[s], self.group)
        except P.CommError as err:
            raise self._fail(s, err) from err

    def _recv(self, s: int, n: int, dtype, tag: int) -> torch.Tensor:
        try:
            out = P.recv(n, dtype, self.servers[s], self.group, tag)
        except P.CommError as err:
            raise self._fail(s, err) from err
        self.bytes_pulled += out.numel() * out.element_size()
        return out

    def _reply(self, s: int) -> torch.Tensor:
        try:
            head = P.recv_reply(self.servers[s], self.group)
        except P.CommError as err:
            raise self._fail(s, err) from err
        self.bytes_pulled += head.numel() * 8
        return head

    # ---- pulls ---------------------------------------------------------------------------
    def pull(self, params: list[torch.Tensor], clock: int, everything: bool = False) -> None:
        """Refresh the local `params` (by plan parameter index) from the servers.

        Dense pieces whose version changed are sent; embedding tables are skipped (their
        rows come through `pull_rows`) unless `everything`, which sends every piece.
        The servers may hold the reply back as the consistency mode requires (BSP, SSP).
        """
        t0 = time.perf_counter()
        for s in range(len(self.servers)):
            pieces = self.plan.server_pieces(s)
            known = [P.WANT if everything else
                     P.SKIP if self.plan.params[p.param].sparse else self.versions[p.index]
                     for p in pieces]
            self.bytes_requested += self._send(s, [
                (P.header(P.Op.PULL, self.rank, clock, len(pieces)), P.TAG_HEADER),
                (torch.tensor(known, dtype=torch.int32), P.TAG_INDEX)])
        for s in range(len(self.servers)):
            pieces = self.plan.server_pieces(s)
            head = self._reply(s)
            versions = self._recv(s, len(pieces), torch.int64, P.TAG_REPLY_INDEX).tolist()
            values = self._recv(s, int(head[3]), self.dtype, P.TAG_REPLY_VALUES)
            self._note_staleness(head)
            self.applied[s], self.ended = int(head[2]), max(self.ended, int(head[8]))
            off = 0
            with torch.no_grad():
                for piece, v in zip(pieces, versions):
                    if v < 0:
                        continue
                    n = self.plan.piece_numel(piece)
                    dst = rows_view(params[piece.param], piece.start, piece.stop)
                    dst.copy_(values[off:off + n].view(dst.shape))
                    self.versions[piece.index] = v
                    off += n
        self.pulls += 1
        self.wait_s += time.perf_counter() - t0

    def _note_staleness(self, head: torch.Tensor) -> None:
        stal = int(head[4])
        self.stal_max = max(self.stal_max, stal)
        self.stal_sum += stal
        self.stal_n += 1
        self.server_stal_max = max(self.server_stal_max, int(head[5]))
        self.server_stal_mean = max(self.server_stal_mean, int(head[6]) / 1000)

    def pull_rows(self, param: int, ids: torch.Tensor, table: torch.Tensor, clock: int) -> None:
        """Copy rows `ids` (unique int64 row ids) of embedding `param` into `table`."""
        pos, pieces = self.plan.row_owner(param, ids)
        owner = torch.tensor([p.server for p in pieces])[pos]
        asked = []
        for s in range(len(self.servers)):
            mine = ids[owner == s]
            if mine.numel() == 0:
                continue
            self.bytes_requested += self._send(s, [
                (P.header(P.Op.ROWS, self.rank, clock, param, mine.numel()), P.TAG_HEADER),
                (mine.to(torch.int32), P.TAG_INDEX)])
            asked.append((s, mine))
        row_shape = self.plan.params[param].shape[1:]
        for s, mine in asked:
            head = self._reply(s)
            values = self._recv(s, int(head[3]), self.dtype, P.TAG_REPLY_VALUES)
            with torch.no_grad():
                table[mine.to(table.device)] = values.view((mine.numel(),) + row_shape).to(
                    table.device, table.dtype)
            self.rows_pulled += mine.numel()

    # ---- pushes --------------------------------------------------------------------------
    def push(self, grads: dict[int, torch.Tensor], clock: int) -> None:
        """Send gradients (by plan parameter index) to their servers; does not wait for them.

        A sparse COO gradient (an embedding with sparse=True) is sent as (row ids, rows);
        a dense one whole. Every server gets one PUSH per clock, even an empty one, which
        is how servers learn the worker's clock.
        """
        for s in range(len(self.servers)):
            index, values = self._encode(s, grads)
            head = P.header(P.Op.PUSH, self.rank, clock, index.numel(), values.numel())
            self.bytes_pushed += self._send(s, [(head, P.TAG_HEADER), (index, P.TAG_INDEX),
                                                (values, P.TAG_VALUES)])
        self.pushes += 1

    def _encode(self, s: int, grads: dict[int, torch.Tensor]):
        counts, chunks = [], []
        for piece in self.plan.server_pieces(s):
            g = grads.get(piece.param)
            if g is None or g.is_sparse:
                counts.append(0)
                continue
            part = rows_view(g.detach(), piece.start, piece.stop).reshape(-1)
            counts.append(part.numel())
            chunks.append(part)
        pairs, ids = [], []
        for k in self.plan.server_sparse_params(s):
            g = grads.get(k)
            if g is None or not g.is_sparse:
                pairs += [P.NO_GRAD, 0]
                continue
            g = g.detach().coalesce()
            rows_ids = g.indices()[0]
            pos, pieces = self.plan.row_owner(k, rows_ids)
            mine = (torch.tensor([p.server for p in pieces], device=rows_ids.device)[pos] == s)
            rows = g.values()[mine]
            pairs += [rows.shape[0], rows.numel()]
            ids.append(rows_ids[mine].to(torch.int32))
            chunks.append(rows.reshape(-1))
        index = torch.tensor(counts + pairs, dtype=torch.int32)
        index = torch.cat([index] + [i.cpu() for i in ids])
        values = (torch.cat([c.to("cpu", self.dtype) for c in chunks]) if chunks
                  else torch.empty(0, dtype=self.dtype))
        return index, values

    def set_values(self, params: list[torch.Tensor], clock: int) -> None:
        """Overwrite the servers' values with the local `params` (optimizer state stays)."""
        for s in range(len(self.servers)):
            parts = [rows_view(params[p.param].detach(), p.start, p.stop).reshape(-1)
                     for p in self.plan.server_pieces(s)]
            values = torch.cat([t.to("cpu", self.dtype) for t in parts]) if parts else \
                torch.empty(0, dtype=self.dtype)
            self._send(s, [(P.header(P.Op.SET, self.rank, clock, values.numel()), P.TAG_HEADER),
                           (values, P.TAG_VALUES)])

    def end_stream(self, epoch: int) -> None:
        """Tell every server this worker's open-ended stream of `epoch` is over (ASP/SSP:
        the other workers stop theirs at their next pull, see `ended`)."""
        for s in range(len(self.servers)):
            self._send(s, [(P.header(P.Op.END, self.rank, 0, epoch), P.TAG_HEADER)])

    def sync(self) -> None:
        """Wait until every live worker asked the same (ASP/SSP, as the fit gathers the
        weights): the servers then hold all their pushes, and `applied` counts them."""
        for s in range(len(self.servers)):
            self._send(s, [(P.header(P.Op.SYNC, self.rank, 0), P.TAG_HEADER)])
        for s in range(len(self.servers)):
            head = self._reply(s)
            self.applied[s], self.ended = int(head[2]), max(self.ended, int(head[8]))

    def done(self) -> None:
        """Tell every server this worker is finished (idempotent; ignores dead servers)."""
        if self.finished:
            return
        self.finished = True
        for rank in self.servers:
            try:
                P.send([(P.header(P.Op.DONE, self.rank, 0), P.TAG_HEADER)], rank, self.group)
            except P.CommError:
                pass

    def stats(self) -> dict:
        return {"bytes_pushed": self.bytes_pushed, "bytes_pulled": self.bytes_pulled,
                "bytes_requested": self.bytes_requested,
                "pushes": self.pushes, "pulls": self.pulls, "rows_pulled": self.rows_pulled,
                "pull_wait_s": self.wait_s, "staleness_max": self.stal_max,
                "staleness_mean": self.stal_sum / max(self.stal_n, 1),
                "all_workers_staleness_max": self.server_stal_max,
                "all_workers_staleness_mean": self.server_stal_mean}
