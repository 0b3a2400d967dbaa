"""`ParameterServer`: the Strategy that trains through sharded parameter servers.

Of the job's ranks the last `servers` are parameter servers (CPU processes holding the
parameters and optimizer state, sharded by bytes); ranks 0..W-1 are workers (rank 0 is the
chief: it prints progress and returns the weights). Each training step a worker pulls
the parameters (embedding tables: only the rows its batch looks up), runs forward and
backward over its micro-batches, and pushes the gradients (embedding tables: the touched
rows only). How stale a worker's parameters may be is the mode:

    "bsp"  bulk-synchronous: the step's gradients of all workers are averaged before the
           update; the same numbers as data-parallel training with the same global batch.
    "asp"  asynchronous: each push is applied at once; nobody waits.
    "ssp"  stale-synchronous: like ASP, but a worker at clock c waits while the slowest live
           worker is below c - staleness.

Every rank calls validate / setup / setup_module / setup_optimizer; then server ranks call
`serve()` (it returns when all workers are done) and worker ranks run the training loop,
`full_state_dict` and `teardown`.

Mixed devices. Servers keep the parameters on the CPU; each worker computes on its own
device (cuda:<local rank> where there is one, else the CPU) and copies values in and out
of CPU payloads, so the protocol runs on gloo groups whatever the workers' devices.
Workers of unequal speed take unequal shares of every global batch: `balance="fixed"` with
declared `weights=[3, 1]`, or `balance="speed"` (BSP), where the workers time their own
forward and backward over the first steps, exchange seconds per sample every
`rebalance_every` steps and re-split (bigtrain.parallel.speed_shares). A worker's loss
weight is its samples / global samples x workers, so the servers' average of the pushes
is still the gradient of the global-batch mean, whatever the split. `slow_ranks={1: 3.0}`
(or BIGTRAIN_SLOW_RANKS) makes worker 1 sleep twice its compute time each step.

Example:
    model.fit(x, y, epochs=3, batch_size=64, devices=4,
              strategy=ParameterServer(servers=1, mode="ssp", staleness=2))
    fit(..., strategy="ps_ssp")          # the same, by name ("ps", "ps_async", "ps_ssp")
    ParameterServer(servers=1, balance="speed", slow_ranks={1: 3.0})   # uneven, measured
"""
from __future__ import annotations

import os
import time
from datetime import timedelta
from dataclasses import replace
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from bigtrain.parallel.base import DistEnv, Shard, StepBatch, Strategy, register
from bigtrain.parallel.comm import all_reduce
from bigtrain.parallel.context import StepContext
from bigtrain.parallel.microbatch import batch_rows, call_module
from bigtrain.parallel.parameter_server.client import WorkerClient
from bigtrain.parallel.parameter_server.config import MODES, PSConfig  # noqa: F401
from bigtrain.parallel.parameter_server.ends import ServerStreamEnds, split_rule_refusal
from bigtrain.parallel.parameter_server.server import ServerService, checkpoint_file
from bigtrain.parallel.parameter_server.sharding import ShardPlan, build_plan
from bigtrain.parallel.parameter_server.store import ShardStore
from bigtrain.parallel.parameter_server.worker import (RowPuller, ServerSideOptimizer,
                                                       rank_device, row_tables,
                                                       start_iterations)
from bigtrain.parallel.slow_ranks import (check_slow_ranks, pace, slow_ranks_option,
                                         start_clocks)
from bigtrain.parallel.speed_shares import SpeedShares, gather_rates


class ParameterServer(Strategy):
    """Workers pull parameters from and push gradients to sharded parameter servers.

    Args:
        servers: number of server ranks (the last ranks of the job).
        mode: "bsp" (synchronous), "asp" (asynchronous) or "ssp" (stale-synchronous).
        staleness: the SSP bound in steps (>= 0).
        checkpoint_dir, checkpoint_every, straggler_delay_s, comm_timeout_s: see PSConfig.
        balance, weights, rebalance_every, ema, clock: the workers' shares of each global
            batch (see PSConfig and the module docstring).
        slow_ranks: worker rank -> slowdown factor >= 1, e.g. {1: 3.0}; default from the
            BIGTRAIN_SLOW_RANKS environment variable.

    Example:
        strategy = ParameterServer(servers=1, mode="ssp", staleness=2)
        history = model.fit(x, y, batch_size=64, strategy=strategy, devices=4)
        print(history.stats)        # the chief's staleness, bytes pushed/pulled
    """

    name = "ps"
    owns_step = True
    supports_loss_scaling = False  # workers push unscaled gradients to the servers
    checkpoint_unsupported = ("the parameter servers hold the parameters and optimizer state: "
                              "checkpoint them with ParameterServer(checkpoint_dir=..., "
                              "checkpoint_every=N) instead of fit(checkpoint_dir=...)")

    def __init__(self, servers: int = 1, mode: str = "bsp", staleness: int = 2,
                 checkpoint_dir: str | None = None, checkpoint_every: int = 0,
                 straggler_delay_s: dict[int, float] | None = None,
                 comm_timeout_s: float | None = None, balance: str = "even",
                 weights: Sequence[float] | None = None,
                 slow_ranks: dict[int, float] | None = None, rebalance_every: int = 5,
                 ema: float = 0.5, clock: str = "wall", cpu_workers: int = 0):
        super().__init__()
        self.config = PSConfig(servers, mode, staleness, checkpoint_dir, checkpoint_every,
                               tuple(sorted((straggler_delay_s or {}).items())), comm_timeout_s,
                               balance, tuple(float(w) for w in weights or ()),
                               tuple(sorted(slow_ranks_option(slow_ranks).items())),
                               rebalance_every, ema, clock, cpu_workers)
        self._shares: SpeedShares | None = None
        self.plan: ShardPlan | None = None
        self.client: WorkerClient | None = None
        self.service: ServerService | None = None
        self._store: ShardStore | None = None
        self._groups = None  # (protocol group, worker group)
        self._params: list[nn.Parameter] = []
        self._puller: RowPuller | None = None  # a worker's lazy pulls (forward hooks)
        self.clock = 0
        self._server_stats: dict = {}
        self._optimizer: ServerSideOptimizer | None = None

    # ---- topology ------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        return self.env.world_size - self.config.servers

    def num_processes(self, devices: int | None) -> int:
        return self.config.servers + 1 if devices is None else int(devices)

    def validate(self, world_size: int, global_batch_size: int) -> None:
        self.config.check_job(world_size, global_batch_size)  # servers, batch, weights
        workers = world_size - self.config.servers
        check_slow_ranks(dict(self.config.slow_ranks), workers)  # workers only
        self.config.check_workers(workers)

    def setup(self, env: DistEnv) -> None:
        self.config.check_servers(env.world_size)
        super().setup(replace(env, device=rank_device(env, self.config)))
        timeout = (None if self.config.comm_timeout_s is None
                   else timedelta(seconds=self.config.comm_timeout_s))
        everyone = list(range(env.world_size))
        # gloo: payloads are CPU tensors, whichever device each worker computes on
        proto = dist.new_group(everyone, timeout=timeout, backend="gloo")
        self._groups = (proto, dist.new_group(list(range(self.workers)), backend="gloo"))
        c = self.config
        self._shares = SpeedShares(self.workers, c.weights if c.balance != "even" else None,
                                   c.rebalance_every, c.ema)

    def is_service_rank(self) -> bool:
        return self.env.rank >= self.workers

    def data_shard(self) -> tuple[int, int]:
        index = min(self.env.rank, self.workers - 1)
        if self.config.balance == "even" or self._shares is None:
            return (index, self.workers)
        return Shard(index, self.workers, bounds=lambda n: self._shares.bounds(index, n))

    def server_ranks(self) -> list[int]:
        return list(range(self.workers, self.env.world_size))

    # ---- model and optimizer -------------------------------------------------------------
    def setup_module(self, module: nn.Module) -> nn.Module:
        named = list(module.named_parameters())
        if not named:
            raise ValueError(f"{type(module).__name__} has no parameters, so a parameter "
                             "server has nothing to hold; give the model trainable layers")
        dtypes = {p.dtype for _, p in named}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError(f"parameter servers need one floating dtype for all parameters, "
                             f"got {sorted(map(str, dtypes))}; cast the model with .to(dtype)")
        tables = row_tables(module)
        self.plan = build_plan([(n, tuple(p.shape), id(p) in tables) for n, p in named],
                               self.config.servers, named[0][1].element_size())
        with torch.no_grad():  # everyone starts from the chief's initial weights
            for _, p in named:
                buf = p.detach().cpu().contiguous()
                dist.broadcast(buf, src=0, group=self._groups[0])
                p.copy_(buf)
        if self.is_service_rank():
            full = {n: p.detach() for n, p in named}
            self._store = ShardStore(self.plan, self.env.rank - self.workers, full)
            return module
        module = module.to(self.env.device)
        self._params = [p for _, p in module.named_parameters()]
        self.client = WorkerClient(self.plan, self.env.rank, self.server_ranks(),
                                   self._groups[0], named[0][1].dtype)
        self._puller = RowPuller(self.client, self._params, lambda: self.clock)
        self._puller.install(module, tables)
        return module

    def stream_agreement(self):
        """Feed.agree for open-ended streams under ASP/SSP: the servers pass on where a
        worker's stream ended (parameter_server.ends), no per-step collective; None under
        BSP (its workers meet every step anyway: the loop's ShortestStream)."""
        if self.config.mode == "bsp" or self.is_service_rank():
            return None
        return ServerStreamEnds(self.client, self.env.rank)

    def setup_optimizer(self, module: nn.Module, make_optimizer) -> torch.optim.Optimizer:
        self._check_split_rule(module, make_optimizer)
        if self.is_service_rank():
            self._store.build_optimizers(make_optimizer)
            path = self._checkpoint_path()
            if path is not None and os.path.exists(path):
                self._store.load(path)  # resume
        self._optimizer = ServerSideOptimizer(module.parameters(), start_iterations(make_optimizer))
        return self._optimizer

    def split_rule_refusal(self, module: nn.Module, make_optimizer) -> str | None:
        """Why splitting tensors by rows over the servers would change `make_optimizer`'s
        update (Lamb's trust ratio reads a whole tensor's norm), or None; fit asks it
        before any rank starts (bigtrain.launch.fit_checks.check_split_rule)."""
        return split_rule_refusal(module, self.config.servers, make_optimizer)

    def _check_split_rule(self, module: nn.Module, make_optimizer) -> None:
        """Every rank refuses the same, for jobs that reach setup without fit's check."""
        why = self.split_rule_refusal(module, make_optimizer)
        if why:
            raise ValueError(why)

    def _checkpoint_path(self) -> str | None:
        if self.config.checkpoint_dir is None:
            return None
        return checkpoint_file(self.config.checkpoint_dir, self.env.rank - self.workers)

    # ---- serving -------------------------------------------------------------------------
    def serve(self) -> None:
        if not self.is_service_rank():
            raise RuntimeError(f"rank {self.env.rank} is a worker, not a parameter server")
        self.service = ServerService(self._store, self.env.rank, self._groups[0],
                                     list(range(self.workers)), self.config.mode,
                                     self.config.staleness, self._checkpoint_path(),
                                     self.config.checkpoint_every)
        self._server_stats = self.service.serve()

    # ---- one step ------------------------------------------------------------------------
    def train_step(self, module, optimizer, batch: StepBatch, compute_loss, autocast,
                   ctx: StepContext | None = None):
        """Pull, forward/backward over the micro-batches, push; returns (outputs, mean loss)."""
        ctx = StepContext() if ctx is None else ctx
        delay = dict(self.config.straggler_delay_s).get(self.env.rank, 0.0)
        if delay:
            time.sleep(delay)
        ctx.mark("pull parameters", phase="comm")
        self.client.pull(self._params, self.clock)
        self._puller.start_step()
        outputs, total = [], 0.0
        t0 = start_clocks()
        try:
            for (x, y, sw), w in zip(batch.micro, batch.weights):
                ctx.mark("forward")
                with autocast():
                    out = call_module(module, x)
                    loss = compute_loss(out, y, sw)
                ctx.mark("backward")
                (loss * w).backward()
                outputs.append(out.detach() if torch.is_tensor(out) else out)
                total = total + loss.detach() * w
        finally:
            self._puller.in_step = False
        self._pace(t0, batch_rows(batch.micro))
        grads = {k: p.grad for k, p in enumerate(self._params) if p.grad is not None}
        ctx.mark("push gradients", phase="comm")
        self.client.push(grads, self.clock)
        for p in self._params:
            p.grad = None
        self._puller.forget()  # our own push changed those rows: pull them again next time
        self.clock += 1
        optimizer.count_step()  # Keras's iterations, read back after the fit
        return outputs, total / max(sum(batch.weights), 1e-12)

    def _pace(self, t0: tuple[float, float], samples: int) -> None:
        """After this step's forward/backward: the slow knob's delay, then (balance="speed")
        the step's compute seconds into the shares; every `rebalance_every` steps that is
        an all-reduce over the workers (all workers step in lock step under BSP)."""
        c = self.config
        factor = dict(c.slow_ranks).get(self.env.rank, 1.0)
        if c.balance != "speed" and factor == 1.0:
            return
        wall, cpu = pace(t0, factor, self.env.device)
        if c.balance == "speed":
            seconds = wall if c.clock == "wall" else cpu
            rank, n = self.env.rank, self.workers
            self._shares.observe(seconds, samples,
                                 lambda s: gather_rates(s, rank, n, group=self._groups[1]))

    # ---- reductions and state ------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce over the workers only (servers take no part in metric reductions)."""
        if self.workers > 1:  # on the host: the group is gloo, workers' devices may differ
            buf = tensor if tensor.device.type == "cpu" else tensor.cpu()
            all_reduce(buf, op, group=self._groups[1])
            if buf is not tensor:
                tensor.copy_(buf)
        return tensor

    def barrier(self) -> None:
        if self.workers > 1:
            dist.barrier(group=self._groups[1])

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Every worker pulls every piece (all table rows too) and returns the full state.

        A worker's own copy holds only the rows its batches looked up, so it is refreshed
        whole here. In ASP/SSP this is a snapshot (a rank-0-only callback reads it alone,
        while the others train); at the fit's end `settle` first lands every push.
        """
        if self.is_service_rank():
            return {}
        self.client.pull(self._params, self.clock, everything=True)
        return {k: v.detach().cpu().clone() for k, v in self.unwrap(module).state_dict().items()}

    def settle(self) -> None:
        """Every worker, after its last step (the loop, before gathering the weights): under
        ASP/SSP the servers answer once every live worker asked (SYNC; a dead one is not
        waited for), so the weights gathered next hold every push, and the optimizer's
        `iterations` becomes the updates the servers applied in this fit."""
        if self.is_service_rank() or self.config.mode == "bsp":
            return
        self.client.sync()
        if self._optimizer is not None:
            self._optimizer.set_applied(max(self.client.applied))

    def load_full_state_dict(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load `state` on every worker; the chief also writes it to the servers."""
        if self.is_service_rank():
            return
        self.unwrap(module).load_state_dict(state)
        if self.env.rank == 0:
            self.client.set_values(self._params, self.clock)

    def stats(self) -> dict:
        """Counters of this rank: bytes, pulls, pushes and observed staleness.

        On workers `staleness_*` is what this worker saw and `all_workers_staleness_*` what
        the servers saw over every worker; on servers, the service's counters. The process
        that called fit(devices=N) runs no rank, so there it is {}: the chief's counters come
        back in `history.stats`.
        """
        if self.is_service_rank():
            return dict(self._server_stats or (self.service.stats() if self.service else {}))
        out = self.client.stats() if self.client else {}
        if self.config.balance != "even" and self._shares is not None:
            out.update(balance=self.config.balance, shares=list(self._shares.shares),
                       share_history=[list(h) for h in self._shares.history])
        return out

    def teardown(self) -> None:
        if self.client is not None:
            self.client.done()
        if self._puller is not None:
            self._puller.remove()

    timing_note = ("comm_exposed is the pull of the parameters and the push of the gradients "
                   "(in SSP/BSP including the wait for other workers); embedding rows pulled "
                   "on lookup count as forward; the optimizer runs on the servers (0 here); "
                   "a straggler_delay_s sleep counts as other")

    def refuse_update_rules(self, rules) -> str | None:
        if rules.clipnorm or rules.global_clipnorm or rules.use_ema:
            return ("the parameter servers update row shards of the parameters, each on its "
                    "own, so clipnorm/global_clipnorm (norms of whole variables or the whole "
                    "model) and use_ema are not applied exactly; use clipvalue, or a "
                    "data-parallel or sharded strategy (ddp, zero3) for these arguments")
        if rules.weight_decay and rules.exclude_from_decay is not None:
            return ("exclude_from_weight_decay: the servers decay row shards of the "
                    "parameters, which the exclusion cannot name; use a data-parallel or "
                    "sharded strategy (ddp, zero3), or drop the exclusion")
        return None

    def describe(self) -> str:
        c = self.config
        extra = f", staleness={c.staleness}" if c.mode == "ssp" else ""
        if c.balance != "even":
            extra += f", balance={c.balance!r}"
        if c.slow_ranks:
            extra += f", slow ranks {dict(c.slow_ranks)}"
        return f"servers={c.servers}, mode={c.mode!r}{extra}"


register("ps", lambda: ParameterServer(mode="bsp"))
register("ps_async", lambda: ParameterServer(mode="asp"))
register("ps_ssp", lambda: ParameterServer(mode="ssp", staleness=2))
register("ps_bsp", lambda: ParameterServer(mode="bsp"))  # the mode names, as papers spell them
register("ps_asp", lambda: ParameterServer(mode="asp"))
