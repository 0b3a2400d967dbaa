"""Random streams of the ranks of one fit (dropout, noise layers).

One process draws every random number from one torch stream, which `bigtrain.set_seed`
sets. Ranks started for a fit are new processes: without this, each began at torch's
default seed, so every run drew the same masks whatever the user's seed, and all ranks
drew the same masks for different samples. Now `fit` draws one number from the caller's
stream (`draw_seed`; a second fit draws another, as one process's second fit continues its
stream), and each rank seeds its own stream from it and its data shard (`stream_seed`):
ranks that read the same samples (a tensor-parallel group) share a stream, as their
replicated activations need the same masks (inside a split region each rank forks a stream
of its own from it: bigtrain.parallel.tensor_random); a pipeline gives each stage its own.

Example:
    base = draw_seed()                              # where fit is called
    torch.manual_seed(stream_seed(base, shard))     # on each rank
"""
from __future__ import annotations

import numpy as np
import torch


def draw_seed() -> int:
    """One number from this process's torch random stream (set by bigtrain.set_seed or
    torch.manual_seed)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def stream_seed(base: int, *keys: int) -> int:
    """A seed for the stream named by `keys` (shard, or pipeline rank and replica) of the run
    whose base seed is `base`: numpy's SeedSequence mixes them, so nearby keys give
    unrelated streams."""
    words = np.random.SeedSequence([base, *keys]).generate_state(2, np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1  # < 2**63: any torch generator takes it


def seed_rank(base: int | None, strategy) -> None:
    """Seed this rank's torch stream from the fit's `base` (None: one process, whose stream
    simply continues) and the rank's data shard; call after `strategy.setup`."""
    if base is not None:
        torch.manual_seed(stream_seed(base, int(strategy.data_shard()[0])))
