"""Where asynchronous workers' open-ended streams end, and what the servers applied.

Under "asp"/"ssp" the workers must not meet every step: a per-step all-reduce over the
workers (the loop's ShortestStream, which stops every rank at the shortest stream) makes
each step wait for the slowest worker, which is what asynchrony avoids. Instead a worker
whose stream runs out tells the servers (END); the servers hand that on in the reply of
every later pull, and each other worker stops the epoch at its next step boundary after
its next pull. A worker may so train a step or two more than the shortest stream (the
steps it started before the news reached it); the workers still leave the epoch together
at its end-of-epoch reductions, so every rank ends cleanly.

Example:
    agree = ServerStreamEnds(client, rank=1)   # Feed.agree for an open-ended stream
    agree(have=True, read=10, epoch=0)          # False once another worker ran out
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from bigtrain.parallel.parameter_server.sharding import build_plan
from bigtrain.parallel.parameter_server.store import steps_rows_alone
from bigtrain.parallel.parameter_server.worker import row_tables


class ServerStreamEnds:
    """Feed.agree for a worker under ASP/SSP: no collective, the servers carry the news.

    Args:
        client: the worker's WorkerClient (its `ended` comes from the servers' replies).
        rank: this worker's rank (for the warning).
    """

    def __init__(self, client, rank: int):
        self.client, self.rank = client, rank
        self.warned = False

    def __call__(self, have: bool, read: int, epoch: int) -> bool:
        """Whether this worker trains another step after `read` batches of `epoch`."""
        if have and self.client.ended <= epoch:
            return True
        self.client.end_stream(epoch)  # the others stop at their next pull
        if have and not self.warned:
            self.warned = True
            warnings.warn(
                f"epoch {epoch + 1}: another worker's stream ended, so worker {self.rank} "
                f"stopped after {read} batches and its further batches were not trained. "
                "Give every rank a stream of the same length, or pass steps_per_epoch=N "
                "(warned once per fit)", UserWarning, stacklevel=2)
        return False


def split_rule_refusal(module: nn.Module, servers: int, make_optimizer) -> str | None:
    """Why `make_optimizer`'s update rule cannot run on `servers` servers that split some of
    `module`'s tensors by rows (a rule that reads a whole tensor: Lamb's trust ratio
    needs the norm of all its rows, which no server holds), or None. Needs no process
    group: fit asks it before any rank starts."""
    named = list(module.named_parameters())
    if servers < 2 or not named or any(isinstance(p, nn.parameter.UninitializedParameter)
                                       for _, p in named):
        return None  # (a lazy module's shapes: the ranks check once it is built)
    tables = row_tables(module)
    plan = build_plan([(n, tuple(p.shape), id(p) in tables) for n, p in named], servers,
                      named[0][1].element_size())
    split = [i.name for k, i in enumerate(plan.params) if len(plan.param_pieces(k)) > 1]
    if not split or steps_rows_alone(make_optimizer):
        return None
    name = type(make_optimizer([nn.Parameter(torch.zeros(1))])).__name__
    return (f"ParameterServer(servers={servers}) splits {split[:3]} by rows over the "
            f"servers, and {name}'s update of a variable depends on all of it (norms, row "
            "or column statistics), so each server would update its rows differently from "
            "one process; use servers=1 or an element-wise optimizer (sgd, adam, adamw, "
            "adagrad, rmsprop, lion, ftrl)")
