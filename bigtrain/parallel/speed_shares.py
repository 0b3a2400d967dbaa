"""Uneven shares of every global batch for ranks of unequal speed: declared weights, or
speeds measured over the first steps and kept up to date with a moving average.

Used by speed-aware data parallel ("ddp_balanced") and by the parameter server's workers
(`ParameterServer(balance="speed")`). Each rank reports its seconds per sample; every
`rebalance_every` measured steps the ranks exchange their best (least disturbed) figure of
the window through a caller-given `gather`, fold 1 / seconds into an exponential moving
average of speeds and re-split. Every rank computes the new shares from the same gathered
numbers, so all make the same decision and the cuts of a batch tile it exactly.

Example:
    shares = SpeedShares(2, rebalance_every=3)
    for step in range(10):
        shares.observe(seconds, samples, gather=lambda s: gather_rates(s, rank, 2))
    shares.bounds(rank, 256)            # this rank's [start, stop) of a 256-sample batch
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.distributed as dist


def split_counts(n: int, shares: Sequence[float]) -> list[int]:
    """Split `n` samples in proportion to `shares` (largest-remainder rounding).

    Every part gets >= 1 sample when n >= len(shares) (taken from the largest part); ties of
    the remainders go to the lower index, so every rank computes the same split.

    Args:
        n: samples in the global batch.
        shares: non-negative relative shares, one per rank (any scale).

    Example:
        >>> split_counts(40, [3, 1])
        [30, 10]
        >>> split_counts(7, [3, 1])
        [5, 2]
    """
    total = float(sum(shares))
    if not shares or total <= 0 or any(s < 0 or not math.isfinite(s) for s in shares):
        raise ValueError(f"shares must be finite, >= 0 and not all 0, got {list(shares)}")
    exact = [s / total * n for s in shares]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:n - sum(counts)]:
        counts[i] += 1
    if n >= len(shares):
        for i in range(len(counts)):
            if counts[i] == 0:
                counts[counts.index(max(counts))] -= 1
                counts[i] = 1
    return counts


class SpeedShares:
    """The fraction of each global batch per rank, and how it changed.

    Args:
        ranks: how many ranks share each batch.
        weights: declared relative shares (e.g. [3, 1]); None: an even start.
        rebalance_every: measured steps between re-splits.
        ema: weight of the previous speed estimate in the moving average, in [0, 1).

    Example:
        >>> s = SpeedShares(2, rebalance_every=1)
        >>> s.rebalance([1e-3, 3e-3]); s.shares          # rank 1 three times slower
        [0.75, 0.25]
        >>> s.bounds(1, 40)
        (30, 40)
    """

    def __init__(self, ranks: int, weights: Sequence[float] | None = None,
                 rebalance_every: int = 5, ema: float = 0.5):
        w = list(weights) if weights else [1.0] * ranks
        self.shares = [x / sum(w) for x in w]
        self.history = [list(self.shares)]
        self.rebalance_every, self.ema = rebalance_every, ema
        self._speed: list[float] | None = None  # EMA of samples per second, per rank
        self._window: list[float] = []           # this rank's seconds per sample, recent steps
        self._steps = 0

    def bounds(self, index: int, n_global: int) -> tuple[int, int]:
        """[start, stop) of rank `index`'s samples in a global batch of `n_global`."""
        counts = split_counts(n_global, self.shares)
        start = sum(counts[:index])
        return start, start + counts[index]

    def observe(self, seconds: float, samples: int,
                gather: Callable[[float], list[float]]) -> None:
        """Record one step of `samples` taking `seconds` on this rank; every
        `rebalance_every` measured steps call `gather` (a collective: every rank's seconds
        per sample, 0 for none) and re-split. Every rank must call this every step."""
        self._steps += 1
        if self._steps == 1:
            return  # the first step pays for allocator and thread-pool warm-up
        if samples:
            self._window.append(seconds / samples)
        if (self._steps - 1) % self.rebalance_every == 0:
            # the least disturbed step: stalls (other processes, GC) only ever add time
            mine = min(self._window) if self._window else 0.0
            self._window = []
            self.rebalance(gather(mine))

    def rebalance(self, s_per_sample: Sequence[float]) -> None:
        """New shares from every rank's seconds per sample (identical input on all ranks)."""
        if any(not s > 0 for s in s_per_sample):
            return  # a rank had no sample to time in this window: keep the split
        new = [1.0 / s for s in s_per_sample]
        if self._speed is None:
            self._speed = new
        else:
            self._speed = [self.ema * o + (1 - self.ema) * n for o, n in zip(self._speed, new)]
        total = sum(self._speed)
        self.shares = [s / total for s in self._speed]
        self.history.append(list(self.shares))


def gather_rates(local_s_per_sample: float, rank: int, world_size: int,
                 group=None) -> list[float]:
    """Every rank's seconds per sample, on every rank (one all-reduce of a world-size vector
    on the CPU; a rank without a measurement sends 0).

    Args:
        local_s_per_sample: this rank's figure.
        rank, world_size: this rank's index in `group` and the group's size.
        group: the process group (None: the default group); it must handle CPU tensors.
    """
    table = torch.zeros(world_size, dtype=torch.float64)
    table[rank] = local_s_per_sample
    dist.all_reduce(table, group=group)
    return table.tolist()
