"""The weights a callback sees while rank 0 runs its hook alone, and how rank 0's new
weights reach every rank.

In a fit on several ranks a callback whose `main_process_only` is True (the default, so
every Keras user's own callback) runs on rank 0 only, while the other ranks go on to the
loop's next collective. Its `self.model.get_weights()` / `set_weights()` must then start no
collective the other ranks do not join (a hang) and must not change rank 0's copy alone
(the ranks would train apart, silently). So while such a hook runs the model reads and
writes through a `Rank0Weights` instead of the fit's LiveWeights:

- reading gives this rank's own copy where the strategy keeps whole weights on every rank
  (ddp, zero1; ps pulls them from the servers), the full state the loop gathered before
  the epoch-end hooks (for callbacks that declare `needs_weights`), or else a gather that
  the other ranks join from their wait after the hook (`Rank0Changes.gather`: a user's
  callback in any training hook); elsewhere it raises, saying where reading works;
- writing keeps the new state as rank 0's `LiveWeights.final_state`. `share_weights`, which
  every rank calls after the hook (`Rank0Changes.share`), loads it on every rank; after
  `on_train_end` it is what the fit returns. A read after a write in the same hook sees
  the new values, as in one process.

Example (what CallbackList does around a rank-0-only hook):
    with rank0_weights(model, readable=False, hook="on_train_batch_end", gather=changes.gather):
        callback.on_train_batch_end(batch, logs)
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from bigtrain.parallel.base import Strategy
from bigtrain.parallel.cpu_optimizer import HostOptimizer
from bigtrain.parallel.parameter_server.strategy import ParameterServer

_UNREADABLE = ("reads the model's weights on rank 0 alone under strategy {name!r}, which "
               "splits them over the ranks: reading them is a step every rank must take, and "
               "no rank waits for it here. Read them in a training hook (on_train_begin/end, "
               "on_epoch_begin/end, on_train_batch_begin/end), set `main_process_only = "
               "False` on the callback so every rank runs it, or read them after fit returns.")


def keeps_whole_weights(strategy) -> bool:
    """Reading the whole model needs no other training rank: every rank holds it (ddp,
    zero1, ddp_cpu_optimizer), or a worker pulls it from the servers (ps)."""
    return (type(strategy).full_state_dict is Strategy.full_state_dict
            or isinstance(strategy, ParameterServer))


def loads_mid_fit(strategy) -> bool:
    """The strategy can load a full state into the running model (not tensor, pipeline)."""
    return (keeps_whole_weights(strategy)
            or type(strategy).load_full_state_dict is not Strategy.load_full_state_dict)


class _Rank0Strategy:
    """The strategy as `set_weights` sees it on rank 0 alone: reads as Rank0Weights does,
    keeps what it would load instead of loading it."""

    def __init__(self, view: "Rank0Weights"):
        self._view = view

    def full_state_dict(self, module) -> dict[str, torch.Tensor]:
        # set_weights merges its new arrays into this: without a readable state (no gather
        # just to write), only the new ones go to final_state, and share_weights keeps the
        # rest as they are
        if self._view.readable:
            return self._view.full_state()
        return dict(self._view.final_state or {})

    def load_full_state_dict(self, module, state) -> None:
        self._view.keep(state)

    def __getattr__(self, name):
        return getattr(self._view.live.strategy, name)


class Rank0Weights:
    """What `model.live` is while rank 0 runs a main-process-only hook alone.

    Args:
        live: the fit's LiveWeights.
        readable: the full state can be read without the other ranks (gathered for this
            hook, or the strategy keeps whole weights).
        hook: the hook's name, for the messages.
        gather: `gather(live)` reads the full state with every rank (they wait for it
            after this hook), or None where no rank waits.
    """

    def __init__(self, live, readable: bool, hook: str, gather=None):
        self.live, self.readable, self.hook, self._gather = live, readable, hook, gather
        self.module, self.strategy = live.module, _Rank0Strategy(self)
        self._read = None  # gathered once per hook call: training does not move meanwhile

    @property
    def distributed(self) -> bool:
        return self.live.distributed

    @property
    def final_state(self):
        return self.live.final_state

    def full_state(self) -> dict[str, torch.Tensor]:
        if self.readable:
            state = self.live.full_state()
        elif self._gather is not None:
            if self._read is None:
                self._read = self._gather(self.live)
            state = self._read
        else:
            raise RuntimeError(f"A callback's {self.hook} "
                               + _UNREADABLE.format(name=self.live.strategy.name))
        pending = self.live.final_state  # set in a hook, loaded everywhere after it
        return {**state, **pending} if pending else state

    def keep(self, state: dict[str, torch.Tensor]) -> None:
        """Rank 0's new weights, for every rank at the next share (or the fit's result)."""
        self.live.final_state = {k: v.detach().cpu().clone() for k, v in state.items()}


@contextlib.contextmanager
def rank0_weights(model, readable: bool, hook: str, gather=None):
    """`model.live` reads and writes as Rank0Weights while the block runs (no fit: as is)."""
    live = getattr(model, "live", None)
    if live is None or not live.distributed:
        yield
        return
    model.live = Rank0Weights(live, readable or keeps_whole_weights(live.strategy), hook,
                              gather)
    try:
        yield
    finally:
        model.live = live


def share_weights(live, all_reduce, is_main: bool, device) -> None:
    """Load rank 0's `live.final_state` on every rank, then clear it.

    A collective every rank calls together: the full state once (rank 0 needs the values
    it did not set; a gather where the strategy shards, which may leave the other ranks
    nothing), then one all-reduce (sum) of every tensor flattened into one float64 vector,
    rank 0 adding its values and the others zeros. Every rank then holds the whole new state
    and the strategy loads its own part (a shard, a pipeline stage's layers).
    """
    strategy = live.strategy
    if not loads_mid_fit(strategy):
        raise RuntimeError(f"A callback set the model's weights during a fit under strategy "
                           f"{strategy.name!r}, which cannot load a whole model into its "
                           "running parts. Set the weights before or after fit, or train "
                           "with ddp, zero1/2/3, fsdp_offload, tensor or pipeline.")
    now = live.full_state()
    mine = {**now, **live.final_state} if is_main else {}
    layout = _layout(strategy, live.module, mine)
    parts = []
    for name, (shape, _) in layout.items():
        new, n = mine.get(name), shape.numel()
        parts.append(new.reshape(-1).to(torch.float64) if new is not None and new.numel() == n
                     else torch.zeros(n, dtype=torch.float64))
    flat = all_reduce(torch.cat(parts).to(device)).cpu() if parts else torch.zeros(0)
    state, at = {}, 0
    for name, (shape, dtype) in layout.items():
        n = shape.numel()
        state[name] = flat[at:at + n].view(shape).to(dtype)
        at += n
    strategy.load_full_state_dict(live.module, state)
    live.final_state = None


def _layout(strategy, module, mine: dict) -> dict:
    """{name: (shape, dtype)} of the whole model, the same on every rank: this rank's own
    module's where it names the whole model as the user's does (a sharded tensor reports its
    whole shape), else rank 0's (a pipeline stage holds only its layers: one broadcast)."""
    if strategy.checkpoint_names(module) is None:
        return {k: (v.shape, v.dtype) for k, v in strategy.unwrap(module).state_dict().items()}
    box = [{k: (v.shape, v.dtype) for k, v in mine.items()}]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def refresh_host_masters(optimizer) -> None:
    """ddp_cpu_optimizer steps fp32 copies of the weights on the host and copies them to the
    model after each step: after loading new weights into the model, its copies must follow,
    or the next step would bring back the old ones."""
    if isinstance(optimizer, HostOptimizer):
        with torch.no_grad():
            for master, param in zip(optimizer.master, optimizer.params):
                master.copy_(param.detach())
