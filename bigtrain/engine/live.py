"""LiveWeights: the user's model's weights while a fit runs on this rank.

During a fit the network lives inside the strategy's wrapper (DDP, FSDP shards, a pipeline
stage), so the user-facing model reads its weights through this object, which the loop
hands it as `owner.live` (None outside a fit). Before epoch-end callbacks that read
weights on rank 0 only, the loop gathers the full state once on every rank
(`gather_if`), so rank 0 never starts a collective alone.

Example:
    live = LiveWeights(strategy, module)
    live.full_state()            # {name: CPU tensor} of the whole model (a collective)
"""
from __future__ import annotations

import torch


class LiveWeights:
    """The strategy and its wrapped module of a running fit, and the gathered full state.

    Args:
        strategy: the run's Strategy (after setup_module).
        module: the module `strategy.setup_module` returned.
    """

    def __init__(self, strategy, module):
        self.strategy, self.module = strategy, module
        self._gathered: dict[str, torch.Tensor] | None = None
        # Rank 0's full state that the fit returns instead of the trained one (a distributed
        # fit's callback that restores earlier weights at its end, as EarlyStopping does)
        self.final_state: dict[str, torch.Tensor] | None = None

    @property
    def distributed(self) -> bool:
        return self.strategy.env.distributed

    def full_state(self) -> dict[str, torch.Tensor]:
        """The full, unsharded state dict: the one gathered for this epoch's callbacks, else
        gathered now (a collective where the strategy shards: every rank must call it)."""
        if self._gathered is not None:
            return self._gathered
        return self.strategy.full_state_dict(self.module)

    def gather_if(self, needed: bool) -> None:
        """Gather the full state now (every rank) and keep it until `release`, if `needed`."""
        if needed:
            self._gathered = self.strategy.full_state_dict(self.module)

    def release(self) -> None:
        self._gathered = None
