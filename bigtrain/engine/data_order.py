"""The order in which a pass visits a map-style Dataset's samples: fit's seeded permutation
(`epoch_permutation`), or a DataLoader's own sampler and drop_last (`LoaderOrder`), drawn
the same on every rank and after a resume (`draw_sampler`).

Example:
    order = LoaderOrder(shuffle=True, drop_last=True, batch_size=32)
    idx = order.indices(n=1000, data_pass=0, seed=0)   # 992 indices, the same on every rank
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The same permutation on every rank: seeded by (seed, epoch), not by global RNG state."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass(frozen=True)
class LoaderOrder:
    """A DataLoader's sample order, which fit follows instead of its own `shuffle` (Keras
    iterates the loader, so the loader's sampler decides).

    Attributes:
        shuffle: the loader's RandomSampler (True: a new permutation each pass, seeded by
            fit's seed and the pass) or SequentialSampler (False).
        sampler: any other sampler (weighted, a subset, with replacement, ...): its indices
            are drawn again each pass, its random draws seeded by fit's seed and the pass,
            so every rank draws the same list and takes its share of each global batch.
        drop_last: leave out the samples after the last whole batch of `batch_size`.
        batch_size: the loader's batch size (what drop_last counts in).
    """
    shuffle: bool = False
    sampler: object = None
    drop_last: bool = False
    batch_size: int | None = None

    def __post_init__(self):
        from torch.utils.data.distributed import DistributedSampler
        replicas = getattr(self.sampler, "num_replicas", 1)
        if isinstance(self.sampler, DistributedSampler) and replicas > 1:
            # each rank's sampler lists other samples: fit, which cuts every global batch
            # into the ranks' shares itself, would train each rank on a share of a share
            raise ValueError(
                f"the DataLoader's sampler is a DistributedSampler over {replicas} "
                "replicas, which hands each rank its own part of the dataset; fit splits "
                "every global batch over the ranks itself, so together they would train "
                f"on about 1/{replicas} of the samples. Pass the DataLoader without it "
                f"(DataLoader(dataset, batch_size=..., shuffle={bool(self.sampler.shuffle)})"
                "): batch_size is the global batch, and every rank reads only its rows")

    def count(self, n: int) -> int:
        """Samples one pass trains on, of a dataset of `n`."""
        return self._kept(n if self.sampler is None else len(self.sampler))

    def indices(self, n: int, data_pass: int, seed: int) -> torch.Tensor:
        """The sample indices of pass `data_pass`, in order (the same on every rank)."""
        if self.sampler is None:
            idx = epoch_permutation(n, seed, data_pass, self.shuffle)
        else:
            idx = draw_sampler(self.sampler, seed, data_pass)
            if len(idx) != len(self.sampler):  # the steps of an epoch were counted by len()
                raise ValueError(
                    f"the DataLoader's sampler ({type(self.sampler).__name__}) gave "
                    f"{len(idx)} indices in pass {data_pass}, but its len() says "
                    f"{len(self.sampler)}; make __len__ return the number of indices "
                    "__iter__ yields")
        return idx[:self._kept(len(idx))]

    def _kept(self, count: int) -> int:
        if not self.drop_last or not self.batch_size:
            return count
        return count // self.batch_size * self.batch_size


def draw_sampler(sampler, seed: int, data_pass: int) -> torch.Tensor:
    """One pass of `sampler`'s indices, the same on every rank and after a resume: its
    random draws are seeded by (seed, pass), through its own `generator` (whose state is
    put back after) or else torch's global generator (forked, so the caller's draws do not
    change). A sampler drawing from another generator (numpy, random) is read as it is."""
    key = seed * 1_000_003 + data_pass
    own = getattr(sampler, "generator", None)
    if isinstance(own, torch.Generator):
        state = own.get_state()
        own.manual_seed(key)
        try:
            return torch.as_tensor(list(sampler), dtype=torch.long)
        finally:
            own.set_state(state)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(key)
        return torch.as_tensor(list(sampler), dtype=torch.long)
