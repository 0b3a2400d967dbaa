"""The worker side of a parameter server: where each rank computes, which embedding tables
are served by rows, the lazy pulls of those rows, and the optimizer stand-in workers hold.

Example:
    puller = RowPuller(client, params, clock=lambda: step)
    puller.install(module, row_tables(module))   # embeddings pull the rows they look up
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from bigtrain.parallel.base import DistEnv
from bigtrain.parallel.parameter_server.config import PSConfig

TABLES = (nn.Embedding, nn.EmbeddingBag)


def row_tables(module: nn.Module) -> set[int]:
    """ids of embedding weights served by rows: those no other kind of layer uses (a table
    tied to an output projection is read whole, so it stays dense)."""
    owners: dict[int, list[nn.Module]] = {}
    for m in module.modules():
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(m)
    return {id(m.weight) for m in module.modules() if isinstance(m, TABLES)
            and all(isinstance(o, TABLES) for o in owners[id(m.weight)])}


class ServerSideOptimizer(torch.optim.Optimizer):
    """What workers get from `setup_optimizer`: the real optimizers live on the servers.

    It counts the steps this worker takes (`count_step`, once per train_step) in its param
    groups' "iterations", where bigtrain's optimizers count Keras's `iterations`, so that
    `model.optimizer.iterations` reads them and the next fit goes on from them
    (bigtrain.engine.carry.final_steps), starting from `iterations`, the count the
    compiled optimizer starts from. Under "bsp" every worker steps together: the count is
    the synchronous steps, one update each on the servers. Under "asp"/"ssp" each push is
    an update of its own: during the fit the count is this worker's steps, and when the
    fit gathers the weights (`set_applied`) it becomes the updates the servers applied to
    them, every worker's pushes (the servers' `updates` in this fit)."""

    def __init__(self, params, iterations: int = 0):
        super().__init__(list(params), {"iterations": int(iterations)})
        self.start = int(iterations)

    def set_applied(self, updates: int) -> None:
        """The count after the servers applied `updates` pushes in this fit (ASP/SSP)."""
        for group in self.param_groups:
            group["iterations"] = self.start + int(updates)

    @property
    def iterations(self) -> int:
        """Keras's `optimizer.iterations`: the steps taken (callbacks read it during fit)."""
        return int(self.param_groups[0]["iterations"])

    def count_step(self) -> None:
        for group in self.param_groups:
            group["iterations"] += 1

    def step(self, closure=None):
        raise RuntimeError("with a ParameterServer strategy the servers apply the updates; "
                           "train through strategy.train_step")


def start_iterations(make_optimizer) -> int:
    """The step count the compiled optimizer starts from (its param groups' "iterations":
    the steps of earlier fits under this compile), read from one built on a probe: 0 for
    an optimizer that counts none. A worker's `ServerSideOptimizer` counts on from it."""
    probe = make_optimizer([nn.Parameter(torch.zeros(1))])
    return int(probe.param_groups[0].get("iterations", 0))


def rank_device(env: DistEnv, config: PSConfig) -> torch.device:
    """Where this rank computes: servers on the host CPU; the last `config.cpu_workers`
    workers on the CPU too; the other workers on the device the job gave them.

    Example:
        >>> env = DistEnv(rank=2, world_size=4, device=torch.device("cuda", 2))
        >>> rank_device(env, PSConfig(servers=1, cpu_workers=1))
        device(type='cpu')
    """
    workers = env.world_size - config.servers
    if env.rank >= workers - config.cpu_workers:
        return torch.device("cpu")
    return env.device


class RowPuller:
    """A worker's lazy pulls, as forward pre-hooks: a row-served embedding pulls the rows its
    batch looks up (each row once per step); a forward outside a training step (evaluate,
    predict) first pulls the dense parameters.

    Args:
        client: the worker's WorkerClient.
        params: the worker's parameters, in the order the shard plan numbers them.
        clock: returns the worker's current clock (step count).
    """

    def __init__(self, client, params: list[nn.Parameter], clock: Callable[[], int]):
        self.client, self.params, self.clock = client, params, clock
        self.fresh: dict[int, torch.Tensor] = {}  # param index -> row ids pulled this step
        self.in_step = False
        self.hooks: list = []

    def install(self, module: nn.Module, tables: set[int]) -> None:
        """Embeddings in `tables` go sparse and pull their rows right before their forward."""
        index = {id(p): k for k, p in enumerate(self.params)}
        for m in module.modules():
            if isinstance(m, TABLES) and id(m.weight) in tables:
                m.sparse = True  # its gradient becomes (row ids, rows)
                k = index[id(m.weight)]
                self.hooks.append(m.register_forward_pre_hook(
                    lambda mod, args, k=k: self._pull_rows(k, mod.weight, args[0])))
        self.hooks.append(module.register_forward_pre_hook(self._refresh_outside_step))

    def start_step(self) -> None:
        self.fresh, self.in_step = {}, True

    def forget(self) -> None:
        """Our own push changed the rows pulled this step: pull them again next time."""
        self.fresh = {}

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def _refresh_outside_step(self, module, args) -> None:
        if not self.in_step:
            self.client.pull(self.params, self.clock())

    def _pull_rows(self, k: int, table: torch.Tensor, ids: torch.Tensor) -> None:
        need = torch.unique(ids.detach().reshape(-1).cpu().long())
        fresh = self.fresh.get(k)
        if fresh is not None:
            need = need[~torch.isin(need, fresh)]
        if need.numel():
            self.client.pull_rows(k, need, table, self.clock())
            self.fresh[k] = need if fresh is None else torch.cat([fresh, need])
