"""Speed-aware data parallel for ranks of unequal speed: every rank holds the whole model, but
each global batch is split in proportion to the ranks' measured (or declared) throughput, so
a fast rank does not wait for a slow one at every gradient all-reduce.

    fit(..., strategy="ddp_balanced", devices=2)                 # measured speeds
    fit(..., strategy=BalancedDataParallel(weights=[3, 1], balance="fixed"), devices=2)

How a step runs on each rank:
    1. the engine cuts this rank's share of the global batch (`data_shard()` returns a
       `Shard` whose `bounds` come from the current shares; largest-remainder rounding,
       every rank >= 1 sample when the batch has enough);
    2. forward + backward on the local share only (timed: this rank's own compute);
    3. gradients all-reduced (sum) and divided by the world size. The engine's loss weights
       n_rank / n_global * world_size make that average the gradient of the global-batch
       mean loss whatever the split: sum_r (world/n) * sum_{i in r} g_i / world = mean_i g_i;
    4. optimizer step (on the device, or on the host with optimizer_device="cpu").
Every `rebalance_every` measured steps the ranks all-reduce their best (least disturbed)
seconds per sample of the window, fold them into an exponential moving average of speeds,
and re-split. Every rank computes the
new shares from the same reduced numbers, so all make the same decision.

Unlike "ddp", gradient communication runs after backward instead of overlapping with it: the
timing must see this rank's compute alone, and on unequal devices the wait for the slowest
rank, not the exposed all-reduce, dominates the step.

Slow-rank knob (tests and benchmarks on one machine): `slow_ranks={1: 3.0}` makes rank 1
sleep twice its compute time after its backward, so it runs 3x slower; when `slow_ranks` is
not given, the environment variable BIGTRAIN_SLOW_RANKS="1:3.0" (read once, here, at
construction) sets it.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from bigtrain.parallel.base import Shard, register
from bigtrain.parallel.comm import all_reduce_grads, broadcast_module
from bigtrain.parallel.cpu_optimizer import setup_optimizer_on
from bigtrain.parallel.data_parallel import DataParallel, check_batch_covers_ranks
from bigtrain.parallel.microbatch import batch_rows
from bigtrain.parallel.slow_ranks import (SLOW_RANKS_ENV, check_slow_ranks,  # noqa: F401
                                         pace, parse_slow_ranks, slow_ranks_option,
                                         start_clocks)  # noqa: F401
from bigtrain.parallel.speed_shares import SpeedShares, gather_rates, split_counts  # noqa: F401

BALANCE_MODES = ("speed", "fixed", "even")
CLOCKS = ("wall", "cpu")


def _check_options(balance, weights, rebalance_every, ema, optimizer_device, clock) -> None:
    """ValueError naming the option to change, before any process group exists."""
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
    if balance == "fixed" and weights is None:
        raise ValueError("balance='fixed' needs weights=[...], one share per rank")
    if weights is not None and (not weights or any(not w > 0 for w in weights)):
        raise ValueError(f"weights must be positive shares, one per rank, got {weights!r}")
    if rebalance_every < 1 or not 0 <= ema < 1:
        raise ValueError(f"need rebalance_every >= 1 and 0 <= ema < 1, got "
                         f"{rebalance_every} and {ema}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if optimizer_device not in (None, "cpu"):
        raise ValueError(f"optimizer_device must be None or 'cpu', got {optimizer_device!r}")


# ---- the strategy ---------------------------------------------------------------------------
class BalancedDataParallel(DataParallel):
    """Data parallel with uneven, speed-proportional shares of every global batch.

    Args:
        balance: "speed" (measure and re-split; starts from `weights` or an even split),
            "fixed" (the declared `weights`, never changed) or "even" (equal shares, as ddp).
        weights: declared relative shares per rank, e.g. [3, 1] (rank 0 takes 3/4).
        slow_ranks: rank -> slowdown factor >= 1 for testing, e.g. {1: 3.0}; default from the
            BIGTRAIN_SLOW_RANKS environment variable (see the module docstring).
        rebalance_every: measured steps between re-splits (speed mode).
        ema: weight of the previous speed estimate in the moving average, in [0, 1)
            (0: use only the newest window).
        optimizer_device: None (optimizer next to the weights) or "cpu" (host optimizer,
            see bigtrain.parallel.cpu_optimizer).
        clock: what a rank's compute is timed with: "wall" (elapsed seconds, synchronised
            with the device: the speed that matters) or "cpu" (this process's CPU seconds,
            for CPU ranks on a host shared with unrelated load that should not move the
            split, as in tests; the slow knob's delay counts as factor x CPU seconds).
        bucket_cap_mb: size of the flat gradient buckets of the all-reduce.

    Example:
        strategy = BalancedDataParallel(slow_ranks={1: 3.0}, rebalance_every=3)
        model.fit(x, y, batch_size=128, strategy=strategy, devices=2)
        model.history.stats["shares"]       # e.g. [0.75, 0.25]
    """

    name = "ddp_balanced"
    syncs_in_backward = False  # gradients stay local until optimizer_step all-reduces them
    timing_note = ("gradients are all-reduced after backward (not overlapped): comm_exposed is "
                   "that all-reduce, including the wait for slower ranks; the slow-rank knob's "
                   "delay counts as backward")

    def __init__(self, balance: str = "speed", weights: Sequence[float] | None = None,
                 slow_ranks: dict[int, float] | None = None, rebalance_every: int = 5,
                 ema: float = 0.5, optimizer_device: str | None = None, clock: str = "wall",
                 bucket_cap_mb: int = 25):
        super().__init__(bucket_cap_mb=bucket_cap_mb)
        slow_ranks = slow_ranks_option(slow_ranks)
        _check_options(balance, weights, rebalance_every, ema, optimizer_device, clock)
        self.balance, self.weights = balance, None if weights is None else list(weights)
        self.slow_ranks = slow_ranks
        self.rebalance_every, self.ema = rebalance_every, ema
        self.optimizer_device, self.clock = optimizer_device, clock
        self._shares = SpeedShares(1)  # the real split is made in setup
        self._params: list[nn.Parameter] = []

    @property
    def supports_loss_scaling(self) -> bool:
        """False with optimizer_device="cpu": the host optimizer copies the gradients in its
        own step, so a GradScaler finds none to unscale and stops the first step (as
        ddp_cpu_optimizer, precision="16-mixed" is then refused before any rank starts)."""
        return self.optimizer_device != "cpu"

    # ---- checks and setup -----------------------------------------------------------------
    def validate(self, world_size: int, global_batch_size: int) -> None:
        check_batch_covers_ranks(self.name, world_size, global_batch_size)
        if self.weights is not None and len(self.weights) != world_size:
            raise ValueError(f"weights={self.weights} declares {len(self.weights)} shares for "
                             f"{world_size} ranks; give one share per rank")
        check_slow_ranks(self.slow_ranks, world_size)

    def setup(self, env) -> None:
        super().setup(env)
        self._shares = SpeedShares(env.world_size,
                                   self.weights if self.balance != "even" else None,
                                   self.rebalance_every, self.ema)

    @property
    def shares(self) -> list[float]:
        """Fraction of each global batch per rank, now."""
        return self._shares.shares

    @property
    def share_history(self) -> list[list[float]]:
        """`shares` at the start and after every re-split."""
        return self._shares.history

    def setup_module(self, module: nn.Module) -> nn.Module:
        module = module.to(self.env.device)
        if self.env.distributed:
            broadcast_module(module)  # same start on every rank, as DDP does
        self._params = [p for p in module.parameters() if p.requires_grad]
        return module

    def setup_optimizer(self, module, make_optimizer):
        return setup_optimizer_on(self.optimizer_device, module, make_optimizer)

    def data_shard(self):
        if not self.env.distributed:
            return (0, 1)
        return Shard(self.env.rank, self.env.world_size, bounds=self.share_bounds)

    def share_bounds(self, n_global: int) -> tuple[int, int]:
        """[start, stop) of this rank's samples in a global batch of `n_global`."""
        return self._shares.bounds(self.env.rank, n_global)

    def no_sync(self, module: nn.Module):
        return super(DataParallel, self).no_sync(module)  # grads stay local until step

    # ---- one step ---------------------------------------------------------------------------
    def sync_grads(self, module, optimizer, batch, ctx) -> None:
        """After the local forward/backward of this rank's share: delay (slow knob), measure
        the step's compute since `ctx.step_start`, average the gradients."""
        ctx.mark("backward (slow-rank delay)")
        compute_s = self._local_compute_s(ctx.step_start)
        if self.env.distributed:
            ctx.mark("gradient all-reduce", phase="comm")
            all_reduce_grads(self._params, materialize=True,
                             bucket_bytes=self.bucket_cap_mb * 2 ** 20)
            if self.balance == "speed":
                self._observe(compute_s, batch_rows(batch.micro))

    @property
    def reads_step_clock(self) -> bool:
        return self.balance == "speed" or bool(self.slow_ranks)

    def _local_compute_s(self, t0: tuple[float, float]) -> float:
        """Seconds of this rank's own compute this step (since `t0`, perf_counter and
        process_time), the slow knob's delay included."""
        if not self.reads_step_clock:
            return 0.0  # nothing reads it: skip the device synchronisation
        wall, cpu = pace(t0, self.slow_ranks.get(self.env.rank, 1.0), self.env.device)
        return wall if self.clock == "wall" else cpu

    def _observe(self, compute_s: float, n_local: int) -> None:
        """Record one step of `n_local` samples; every `rebalance_every` measured steps,
        re-split (collective)."""
        rank, world = self.env.rank, self.env.world_size
        self._shares.observe(compute_s, n_local, lambda s: gather_rates(s, rank, world))

    def _rebalance(self, s_per_sample: list[float]) -> None:
        """New shares from every rank's seconds per sample (identical input on all ranks)."""
        self._shares.rebalance(s_per_sample)

    # ---- reporting --------------------------------------------------------------------------
    def stats(self) -> dict:
        """Shares (fraction of each global batch per rank) and their history, for FitResult."""
        return {"balance": self.balance, "shares": list(self.shares),
                "share_history": [list(s) for s in self.share_history]}

    def describe(self) -> str:
        slow = f", slow ranks {self.slow_ranks}" if self.slow_ranks else ""
        host = ", optimizer on the host" if self.optimizer_device == "cpu" else ""
        return f"ddp balanced by {self.balance}{slow}{host}"


register("ddp_balanced", BalancedDataParallel)
