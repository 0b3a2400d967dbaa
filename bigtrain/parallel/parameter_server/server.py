"""The server rank's service: one handler thread per worker, BSP / ASP / SSP clocks.

Each handler blocks in `recv(src=worker)` and answers that worker's requests in order
(protocol.py). Handlers only meet on the per-piece locks of the ShardStore and on one
condition variable that guards the clocks, so a slow worker holds back others only where
the consistency model says it must:

    BSP  pushes of clock t are summed and averaged (divided by the number of pushes) and
         applied once every live worker pushed; a pull at clock t waits for that update.
    ASP  every push is applied at once; pulls never wait.
    SSP  every push is applied at once; a pull at clock c waits while the slowest live
         worker's clock is below c - staleness (a worker whose open-ended stream ran out,
         END, does not count until it pushes again: it waits for the others at the
         epoch's end).

A worker whose connection closes (process died) is dropped: it no longer counts for BSP
completion nor holds back SSP, and the others finish. A worker's DONE ends its handler.
The service returns when no live worker is left.

Example:
    service = ServerService(store, rank=3, group=g, workers=[0, 1, 2], mode="ssp",
                            staleness=2)
    stats = service.serve()
"""
from __future__ import annotations

import os
import threading
import traceback

import torch

from bigtrain.parallel.parameter_server import protocol as P
from bigtrain.parallel.parameter_server.store import PushError, ShardStore


class ServerService:
    """Runs one parameter server until every worker is done or dead.

    Args:
        store: this server's pieces.
        rank: this process's global rank.
        group: the process group used for the protocol's point-to-point messages.
        workers: global ranks of the workers.
        mode: "bsp", "asp" or "ssp".
        staleness: SSP bound in clocks (ignored by BSP and ASP).
        checkpoint_path: file to save the store to (None: never).
        checkpoint_every: save after every this many updates (0: only at the end).
    """

    def __init__(self, store: ShardStore, rank: int, group, workers: list[int], mode: str,
                 staleness: int, checkpoint_path: str | None = None, checkpoint_every: int = 0):
        self.store, self.rank, self.group = store, rank, group
        self.workers, self.mode, self.staleness = list(workers), mode, staleness
        self.checkpoint_path, self.checkpoint_every = checkpoint_path, checkpoint_every
        self.cond = threading.Condition()
        self.clock = {w: 0 for w in self.workers}  # steps each worker has pushed
        self.live = set(self.workers)
        self.dead: dict[int, str] = {}
        self.server_clock = 0  # updates applied in this run (BSP: clocks; ASP/SSP: pushes)
        self.ended = 0  # 1 + the last epoch in which a worker's open-ended stream ran out
        self.parked: set[int] = set()  # workers out of stream, not pushing until they start
        self.synced: dict[int, int] = {}  # worker -> SYNCs it sent
        self.pending: dict[int, dict] = {}  # BSP: worker -> gradients of the current clock
        self.errors: dict[int, str] = {}  # worker -> rejection to report on its next reply
        self.fatal: str | None = None
        self.active = self.peak_active = 0
        self.stal_max = self.stal_sum = self.stal_n = self.rejected = 0

    # ---- service loop --------------------------------------------------------------------
    def serve(self) -> dict:
        """Serve until all workers are done or dead; returns `stats()`.

        Raises:
            RuntimeError: a handler failed for a reason other than its worker leaving.
        """
        threads = [threading.Thread(target=self._run_worker, args=(w,), daemon=True,
                                    name=f"ps-handler-{w}") for w in self.workers]
        for t in threads:
            t.start()
        with self.cond:
            self.cond.wait_for(lambda: not self.live or self.fatal is not None)
        if self.fatal is not None:
            raise RuntimeError(f"parameter server on rank {self.rank} failed:\n{self.fatal}")
        for t in threads:
            t.join(timeout=5.0)
        if self.checkpoint_path:
            self.store.save(self.checkpoint_path)
        return self.stats()

    def stats(self) -> dict:
        with self.cond:
            return {"updates": self.store.updates, "staleness_max": self.stal_max,
                    "staleness_mean": self.stal_sum / max(self.stal_n, 1), "pulls": self.stal_n,
                    "peak_concurrent_requests": self.peak_active,
                    "rejected_pushes": self.rejected, "dead_workers": sorted(self.dead)}

    def _run_worker(self, w: int) -> None:
        try:
            while True:
                head = P.recv_header(w, self.group, P.TAG_HEADER)
                with self.cond:
                    self.active += 1
                    self.peak_active = max(self.peak_active, self.active)
                try:
                    if int(head[0]) == P.Op.DONE:
                        self._leave(w, None)
                        return
                    self._dispatch(w, head)
                finally:
                    with self.cond:
                        self.active -= 1
        except P.CommError as err:
            self._leave(w, str(err).splitlines()[0] if str(err) else "connection closed")
        except BaseException:  # noqa: BLE001 - any other failure ends the job, loudly
            with self.cond:
                self.fatal = traceback.format_exc()
                self.cond.notify_all()

    def _leave(self, w: int, reason: str | None) -> None:
        with self.cond:
            self.live.discard(w)
            if reason is not None:
                self.dead[w] = reason
            if self.mode == "bsp":
                self._maybe_step_bsp()
            self.cond.notify_all()

    def _dispatch(self, w: int, head: torch.Tensor) -> None:
        op, clock = int(head[0]), int(head[2])
        if op == P.Op.PUSH:
            self._push(w, clock, int(head[3]), int(head[4]))
        elif op == P.Op.PULL:
            self._pull(w, clock, int(head[3]))
        elif op == P.Op.ROWS:
            self._rows(w, clock, int(head[3]), int(head[4]))
        elif op == P.Op.SET:
            self._set(w, int(head[3]))
        elif op == P.Op.END:
            self._end_stream(w, int(head[3]))
        elif op == P.Op.SYNC:
            self._sync(w)
        else:
            raise RuntimeError(f"unknown operation {op} from rank {w}")

    # ---- operations ----------------------------------------------------------------------
    def _push(self, w: int, clock: int, n_index: int, n_values: int) -> None:
        index = P.recv(n_index, torch.int32, w, self.group, P.TAG_INDEX)
        values = P.recv(n_values, self.store.tensors[0].dtype, w, self.group, P.TAG_VALUES)
        try:
            grads = self.store.decode_push(index, values)
        except PushError as err:
            grads = {}  # the step still counts, so nobody waits for this worker
            with self.cond:
                self.errors[w] = str(err)
                self.rejected += 1
        if self.mode == "bsp":
            with self.cond:
                self.pending[w] = grads
                self.clock[w] = clock + 1
                self._maybe_step_bsp()
            return
        self.store.apply(grads)
        with self.cond:
            self.clock[w] = max(self.clock[w], clock + 1)
            self.parked.discard(w)
            self.server_clock += 1
            self.store.updates += 1
            due = self._checkpoint_due()
            self.cond.notify_all()
        if due:
            self.store.save(self.checkpoint_path)

    def _end_stream(self, w: int, epoch: int) -> None:
        """Worker `w`'s open-ended stream of `epoch` ran out (or it stopped there): the
        others learn it from `ended` in their next reply, and until `w` pushes again the
        SSP bound does not wait for it (it waits for them at the epoch's end)."""
        with self.cond:
            self.ended = max(self.ended, epoch + 1)
            self.parked.add(w)
            self.cond.notify_all()

    def _sync(self, w: int) -> None:
        """Answer once every live worker sent as many SYNCs as `w` (a dead one is not
        waited for): each worker's pushes precede its SYNC, so the reply's clock counts
        every update the workers made before gathering the weights (ASP/SSP)."""
        with self.cond:
            self.synced[w] = n = self.synced.get(w, 0) + 1
            self.parked.add(w)  # it pushes nothing while it waits: SSP must not wait for it
            self.cond.notify_all()
            self.cond.wait_for(lambda: all(self.synced.get(v, 0) >= n for v in self.live)
                               or self.fatal is not None)
            head = P.header(P.Op.SYNC, self.rank, self.server_clock, e=self.ended)
        P.send([(head, P.TAG_REPLY)], w, self.group)

    def _set(self, w: int, n_values: int) -> None:
        values = P.recv(n_values, self.store.tensors[0].dtype, w, self.group, P.TAG_VALUES)
        try:
            self.store.assign(values)
        except PushError as err:
            with self.cond:
                self.errors[w] = str(err)

    def _maybe_step_bsp(self) -> None:
        """Apply the averaged gradients once every live worker pushed (caller holds cond)."""
        if not self.pending or any(w not in self.pending for w in self.live):
            return
        total: dict[int, torch.Tensor] = {}
        for grads in self.pending.values():
            for pos, g in grads.items():
                total[pos] = g if pos not in total else (
                    total[pos].to_dense() + g.to_dense() if total[pos].is_sparse != g.is_sparse
                    else total[pos] + g)
        self.store.apply(total, scale=1.0 / len(self.pending))
        self.pending = {}
        self.server_clock += 1
        self.store.updates += 1
        if self._checkpoint_due():
            self.store.save(self.checkpoint_path)
        self.cond.notify_all()

    def _checkpoint_due(self) -> bool:
        return bool(self.checkpoint_path and self.checkpoint_every
                    and self.store.updates % self.checkpoint_every == 0)

    def _wait_for_clock(self, clock: int) -> int:
        """Block as the mode requires for a pull at `clock`; returns the observed staleness."""
        def slowest():
            return min((self.clock[v] for v in self.live - self.parked), default=clock)
        with self.cond:
            if self.mode == "bsp":
                self.cond.wait_for(lambda: self.server_clock >= clock or self.fatal is not None)
            elif self.mode == "ssp":
                self.cond.wait_for(lambda: slowest() >= clock - self.staleness
                                   or self.fatal is not None)
            stal = max(0, clock - slowest())
            self.stal_max = max(self.stal_max, stal)
            self.stal_sum += stal
            self.stal_n += 1
            return stal

    def _reply_error(self, w: int, op: int) -> bool:
        with self.cond:
            msg = self.errors.pop(w, None)
        if msg is not None:
            P.send(P.error_reply(op, self.rank, self.server_clock, msg), w, self.group)
        return msg is not None

    def _pull(self, w: int, clock: int, n_pieces: int) -> None:
        known = P.recv(n_pieces, torch.int32, w, self.group, P.TAG_INDEX).tolist()
        stal = self._wait_for_clock(clock)
        if self._reply_error(w, P.Op.PULL):
            return
        if n_pieces != len(self.store.pieces):
            msg = (f"pull lists {n_pieces} pieces, this server holds {len(self.store.pieces)}; "
                   "the worker's model differs from the servers'")
            P.send(P.error_reply(P.Op.PULL, self.rank, self.server_clock, msg), w, self.group)
            return
        versions, chunks = [], []
        for pos, k in enumerate(known):
            if k == P.SKIP:
                versions.append(-1)
                continue
            v, data = self.store.read(pos)
            if v == k:
                versions.append(-1)
            else:
                versions.append(v)
                chunks.append(data)
        values = torch.cat(chunks) if chunks else torch.empty(0, dtype=self.store.tensors[0].dtype)
        with self.cond:
            smax, smean = self.stal_max, self.stal_sum / max(self.stal_n, 1)
        head = P.header(P.Op.PULL, self.rank, self.server_clock, values.numel(), stal, smax,
                        int(smean * 1000), e=self.ended)
        P.send([(head, P.TAG_REPLY), (torch.tensor(versions, dtype=torch.int64),
                                      P.TAG_REPLY_INDEX), (values, P.TAG_REPLY_VALUES)],
               w, self.group)

    def _rows(self, w: int, clock: int, param: int, n_ids: int) -> None:
        ids = P.recv(n_ids, torch.int32, w, self.group, P.TAG_INDEX).long()
        if self._reply_error(w, P.Op.ROWS):
            return
        try:
            values = self.store.gather_rows(param, ids)
        except (PushError, IndexError) as err:
            P.send(P.error_reply(P.Op.ROWS, self.rank, self.server_clock, str(err)), w,
                   self.group)
            return
        head = P.header(P.Op.ROWS, self.rank, self.server_clock, values.numel())
        P.send([(head, P.TAG_REPLY), (values, P.TAG_REPLY_VALUES)], w, self.group)


def checkpoint_file(directory: str, server: int) -> str:
    """Where server `server` keeps its checkpoint inside `directory`."""
    return os.path.join(directory, f"ps-server{server}.pt")
