"""The Strategy interface every way of splitting the work implements, and its name registry.

A strategy is handed the single-device model and the process topology (`DistEnv`) and decides
how the model, the optimizer and the data are split across ranks, and how gradients meet.
The engine owns the training step (bigtrain.engine.step) and calls this interface's hooks, so `fit(strategy="ddp")`,
`fit(strategy="zero3")` and `fit(strategy=ParameterServer(...))` run the same loop.

Lifecycle on every rank (after the process group exists):
    strategy.validate(world_size, global_batch)   # bad input -> ValueError, before any hang
    strategy.check_model(module, world_size)      # a model it cannot split: before launch
    strategy.setup(env)
    module = strategy.setup_module(module)
    opt = strategy.setup_optimizer(module, make_optimizer)
    for each global batch: bigtrain.engine.step.train_step(strategy, ctx, ...)
        # the engine runs the micro-steps and calls the hooks no_sync, backward,
        # sync_grads, optimizer_step; a strategy with owns_step runs `train_step` itself
    full = strategy.full_state_dict(module)          # rank 0 gets unsharded weights

Names and objects are interchangeable: `resolve_strategy("zero3")` and `Sharded(reshard=True)`
give equal strategies (see `register`).
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from bigtrain.parallel.comm import all_reduce

if TYPE_CHECKING:
    from bigtrain.parallel.context import StepContext


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. Built once per rank and passed explicitly.

    Attributes:
        rank: global rank, 0..world_size-1.
        world_size: number of processes in the job.
        local_rank: rank on this host.
        local_world_size: processes on this host.
        device: the device this rank computes on (cpu, or cuda:<local_rank>).
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class StepBatch:
    """One rank's share of one global batch, already split into micro-batches.

    Attributes:
        micro: list of (inputs, targets, sample_weight) on the rank's device; `inputs` is a
            tensor or a tuple of tensors (multi-input models), `targets` likewise.
        weights: per-micro-batch loss weights. Each is (samples in the micro-batch) /
            (samples in the whole global batch) * (number of gradient-averaging replicas),
            so that averaged gradients equal the gradient of the global-batch mean loss,
            however unevenly the samples were split.
    """
    micro: list
    weights: list[float]


class Shard(tuple):
    """`(index, count)` of a rank's data shard that also says how to cut each global batch.

    `Strategy.data_shard()` may return one instead of a plain tuple when its ranks take
    uneven shares (speed-aware data parallel): the engine then asks `bounds(n_global)` for
    this rank's `[start, stop)` of every global batch, so the split may change between
    steps. It still unpacks as `index, count` (evaluation keeps the even split).

    Example:
        shard = Shard(1, 2, bounds=lambda n: (3 * n // 4, n))   # rank 1 takes the last 1/4
        index, count = shard; shard.bounds(40)                   # -> (30, 40)
    """
    bounds: Callable[[int], tuple[int, int]] | None

    def __new__(cls, index: int, count: int, bounds=None):
        self = super().__new__(cls, (int(index), int(count)))
        self.bounds = bounds
        return self


class Strategy:
    """Base class: single-process behaviour; distributed strategies override pieces.

    Subclasses set `name` and override what they change. Every method has a working default
    so a new strategy only writes what differs.
    """

    name = "single"
    #: True when the strategy runs a whole step with its own schedule (a pipeline, the
    #: parameter server's pull/compute/push): the engine then calls `train_step` instead of
    #: running the micro-steps itself (bigtrain.engine.step).
    owns_step = False
    #: Why fit(checkpoint_dir=...) cannot be used with this strategy (None: it can).
    checkpoint_unsupported: str | None = None
    #: Gradient communication runs inside backward and `no_sync` skips it (DDP, FSDP): the
    #: engine then measures how much of it backward waits for (bigtrain.engine.comm_probe).
    syncs_in_backward = False
    #: How this strategy's step phases are measured and what they leave out (run record).
    timing_note = "one process: no communication"
    #: Whether this strategy can scale the loss for float16 training (a GradScaler); when
    #: False, precision="16-mixed" is refused before anything starts.
    supports_loss_scaling = True
    #: Whether `sync_grads` reads `ctx.step_start` (the step's clocks, noted by the engine
    #: only then: the process CPU clock is a system call of several us on some machines).
    reads_step_clock = False

    def __init__(self):
        self.env = DistEnv()

    # ---- checks that must run before any process group exists ---------------------------
    def num_processes(self, devices: int | None) -> int:
        """How many processes this strategy needs when the user asked for `devices`."""
        return 1 if devices is None else int(devices)

    def validate(self, world_size: int, global_batch_size: int) -> None:
        """Raise ValueError with a fix when this strategy cannot run on `world_size` ranks."""

    def check_model(self, module: nn.Module, world_size: int) -> None:
        """Raise ValueError/TypeError with a fix when this strategy cannot split `module` over
        `world_size` ranks (fit calls it before starting any rank); must not change it."""

    # ---- setup on every rank ------------------------------------------------------------
    def setup(self, env: DistEnv) -> None:
        self.env = env

    def use_precision(self, precision: str) -> None:
        """Told the run's precision ("32", "bf16-mixed", "16-mixed") before `setup_module`;
        a strategy that casts parameters itself (FSDP's mixed-precision policy) keeps it.
        Default: nothing (the engine's autocast does the casting)."""

    #: whether `use_input_sample` wants the fit's first rows (read only for such strategies)
    wants_input_sample = False
    #: whether `check_model` reads them too: fit then hands them over before any rank
    #: starts (the pipeline checks that its chain of layers computes the model's forward)
    checks_input_sample = False

    def use_input_sample(self, x) -> None:
        """Told a few rows of the fit's training inputs (a tensor, or a tuple for several
        inputs, on this rank's device; None for a stream) before `setup_module`, where
        `wants_input_sample`: the pipeline times its layers on them. Default: nothing."""

    def setup_module(self, module: nn.Module) -> nn.Module:
        return module.to(self.env.device)

    def setup_optimizer(self, module: nn.Module,
                        make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
                        ) -> torch.optim.Optimizer:
        return make_optimizer(module.parameters())

    def data_shard(self) -> tuple[int, int]:
        """(index, count): this rank reads data shard `index` of `count`."""
        return (self.env.rank, self.env.world_size) if self.env.distributed else (0, 1)

    @property
    def grad_replicas(self) -> int:
        """How many replicas average their gradients (loss weights are scaled by it)."""
        return self.data_shard()[1]

    def is_service_rank(self) -> bool:
        """True on ranks that serve others (parameter servers) instead of running the loop."""
        return False

    def serve(self) -> None:
        """Run this rank's service until the workers are done (only if `is_service_rank`)."""
        raise RuntimeError(f"strategy {self.name!r} has no service ranks")

    def teardown(self) -> None:
        """Release what `setup` created (subgroups, threads). Called on every rank."""

    # ---- hooks of the engine's step (bigtrain.engine.step) --------------------------------
    def no_sync(self, module: nn.Module):
        """Context that skips gradient synchronisation (all but the last micro-step)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's (weighted, loss-scaled) loss; none where no weight
        trains (a model frozen whole: the loss has no graph)."""
        if loss.requires_grad:
            loss.backward()

    def sync_grads(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                   batch: StepBatch, ctx: StepContext) -> None:
        """Bring the gradients together after the last micro-batch's backward and before the
        update (an explicit all-reduce, marked through `ctx`). Default: nothing: one process
        has nothing to sync, and DDP/FSDP sync inside backward."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer, ctx: StepContext) -> None:
        """The update: `optimizer.step()`, through the loss scaler under float16."""
        ctx.step_optimizer(optimizer)

    def train_step(self, module, optimizer, batch: StepBatch, compute_loss, autocast,
                   ctx: StepContext | None = None):
        """A whole step run by the strategy's own schedule; only for `owns_step` strategies
        (the engine runs everyone else's step through the hooks above).

        Args:
            module: the module returned by `setup_module`.
            optimizer: from `setup_optimizer`.
            batch: this rank's micro-batches and their loss weights.
            compute_loss: `compute_loss(outputs, targets, sample_weight) -> scalar mean loss`.
            autocast: a context manager factory for mixed precision.
            ctx: the fit's StepContext (None: a silent one, for steps outside a fit).

        Returns:
            (list of outputs per micro-batch, detached mean loss of this rank's samples).
        """
        raise NotImplementedError(
            f"strategy {self.name!r} lets the engine run its step (owns_step is False): "
            "call bigtrain.engine.step.train_step(strategy, ctx, ...)")

    def refuse_update_rules(self, rules) -> str | None:
        """Why this strategy cannot apply the optimizer's Keras update rules (`rules`, a
        bigtrain.parallel.update_rules.UpdateRules: clipping, weight decay, EMA) exactly, or
        None when it can. Asked before any process starts."""
        return None

    def stats(self) -> dict:
        """Figures of the run for FitResult.stats and the run record (shares, bubble, ...)."""
        return {}

    # ---- reductions and state -----------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce `tensor` across all ranks in place (identity on one process)."""
        if self.env.distributed:
            all_reduce(tensor, op)
        return tensor

    def barrier(self) -> None:
        if self.env.distributed:
            dist.barrier()

    def unwrap(self, module: nn.Module) -> nn.Module:
        """The user's module inside whatever wrapper `setup_module` added."""
        return getattr(module, "module", module)

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Full, unsharded CPU state dict (every rank must call it; rank 0 uses it)."""
        return {k: v.detach().cpu().clone() for k, v in self.unwrap(module).state_dict().items()}

    def checkpoint_names(self, module: nn.Module):
        """How this rank's state names map to the user's model for checkpoints: None when
        they are the same, else `(rename, model_keys)`: `rename(local fqn) -> fqn in the
        user's model`, and the set of every model key of the whole model (a rank that holds
        part of it, like a pipeline stage, must not call the others' keys foreign); a third
        entry, where present, renames optimizer state (`state_name(local fqn)`: a pipeline
        files a weight tied across stages under one name, as one process does)."""
        return None

    def load_full_state_dict(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a full, unsharded state dict into the (possibly wrapped) module."""
        self.unwrap(module).load_state_dict(state)

    def describe(self) -> str:
        return self.name

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __repr__(self):
        return f"{type(self).__name__}({self.describe()})"


_REGISTRY: dict[str, Callable[[], Strategy]] = {}
# Built-in names and the module that registers each. The module is imported on first use of
# the name: a DDP or single-process fit then never imports DTensor, FSDP or the pipeline
# (about 1.8 s of every process start on a 2-core machine).
_BUILT_IN = {
    **dict.fromkeys(("ddp", "data_parallel"), "bigtrain.parallel.data_parallel"),
    "ddp_balanced": "bigtrain.parallel.balanced",
    "ddp_cpu_optimizer": "bigtrain.parallel.cpu_optimizer",
    **dict.fromkeys(("ps", "ps_async", "ps_ssp", "ps_bsp", "ps_asp"),
                    "bigtrain.parallel.parameter_server.strategy"),
    "zero1": "bigtrain.parallel.zero1",
    **dict.fromkeys(("zero2", "zero3", "fsdp", "fsdp_offload"), "bigtrain.parallel.sharded"),
    **dict.fromkeys(("tensor", "tensor_parallel"), "bigtrain.parallel.tensor_parallel"),
    "pipeline": "bigtrain.parallel.pipeline",
}


def register(name: str, factory: Callable[[], Strategy]) -> None:
    """Make `fit(strategy=name)` build `factory()`.

    Example:
        register("fsdp_offload", lambda: Sharded(reshard=True, offload=True))
    """
    if name in _REGISTRY and getattr(factory, "__module__", None) == _BUILT_IN.get(name):
        return  # a built-in module imported late does not undo the user's own registration
    _REGISTRY[name] = factory


def strategy_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILT_IN))


def resolve_strategy(strategy: str | Strategy | None) -> Strategy:
    """A Strategy from a registered name, an instance, or None (single process)."""
    if strategy is None:
        strategy = "single"
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str) and strategy not in _REGISTRY and strategy in _BUILT_IN:
        importlib.import_module(_BUILT_IN[strategy])
    if isinstance(strategy, str) and strategy in _REGISTRY:
        return _REGISTRY[strategy]()
    raise ValueError(f"unknown strategy {strategy!r}; valid names: {', '.join(strategy_names())}"
                     " (or pass a bigtrain.parallel.Strategy object)")


register("single", Strategy)

