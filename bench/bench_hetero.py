"""Heterogeneous data parallel on 2 gloo ranks, rank 1 made 3x slower by the slow-rank knob:
step time of the speed-aware split ("ddp_balanced", measured shares) against an equal split
(the same strategy with balance="even", so both pay for the same gradient all-reduce).

Model: a per-position MLP over (64, 16) inputs (Dense 256 -> Dense 256 -> Flatten -> Dense 10,
softmax, Adam), global batch 256, compute-heavy per sample so that splitting samples moves
the step time. The knob sleeps twice rank 1's own compute after its backward.

Each rank builds both contenders once. The speed-aware one first trains `--warm` steps so its
shares converge (re-split every 5 steps from wall-clock timings). Then repeats alternate the
two (order rotated every repeat, bench.common.alternate); a repeat is `--steps` steps after a
barrier and its time is the slower rank's. The table gives ms per step and the ratio
(goal: speed-aware / equal <= 0.6; ideal with a 3x slower rank: (1/4 * 3) / (1/2 * 3) = 0.5,
when seconds per sample do not depend on the local batch; on a CPU whose per-sample cost
grows with the local batch (activations falling out of cache), the equal split's slow rank
pays more than twice the speed-aware one's and the ratio can fall below 0.5).

    python bench/bench_hetero.py            # about a minute on 2 cores
    python bench/bench_hetero.py --quick    # fewer repeats
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import Row, alternate, machine_line, report_step_ratio  # noqa: E402
from tests.dist import run_ranks  # noqa: E402

WORLD, SLOW, BATCH, SEQ, FEATURES, HIDDEN = 2, 3.0, 256, 64, 16, 256
TARGET = 0.6  # speed-aware step time / equal-split step time


def _task(steps: int):
    """(owner model, TrainTask) built identically on every rank: `steps` global batches."""
    import bigtrain
    from bigtrain.api.training import make_task, prepare_data
    from bigtrain.engine.task import FitConfig
    from bigtrain.layers import Dense, Flatten, Input
    from bigtrain.models import Model
    bigtrain.clear_session()
    bigtrain.set_seed(0)
    inp = Input(shape=(SEQ, FEATURES))
    h = Dense(HIDDEN, activation="relu")(Dense(HIDDEN, activation="relu")(inp))
    model = Model(inp, Dense(10, activation="softmax")(Flatten()(h)))
    model.compile(optimizer="adam", loss="categorical_crossentropy", learning_rate=1e-3)
    rng = np.random.default_rng(0)
    x = rng.random((steps * BATCH, SEQ, FEATURES), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, steps * BATCH)]
    cfg = FitConfig(epochs=1, batch_size=BATCH, verbose=0, seed=0)
    return model, make_task(model, prepare_data(model, x, y), None, cfg, [])


class Contender:
    """One strategy set up on this rank, stepping through the task's global batches."""

    def __init__(self, strategy, steps: int):
        from bigtrain.engine.steps import autocast_factory, safe_loss
        from bigtrain.parallel.base import DistEnv
        model, self.task = _task(steps)
        self.strategy = strategy
        strategy.setup(DistEnv(rank=dist.get_rank(), world_size=WORLD))
        self.module = strategy.setup_module(self.task.module)
        self.optimizer = strategy.setup_optimizer(self.module, self.task.make_optimizer)
        self.loss_fn = safe_loss(self.task.compute_loss)
        self.autocast = autocast_factory("32", torch.device("cpu"))
        self.perm, self.next = torch.arange(steps * BATCH), 0

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, the slower rank's (after a barrier)."""
        from bigtrain.engine.step import train_step
        from bigtrain.engine.steps import make_step_batch
        from bigtrain.parallel.context import StepContext
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            lo = (self.next % (len(self.perm) // BATCH)) * BATCH
            self.next += 1
            batch = make_step_batch(self.task.train, self.perm[lo:lo + BATCH],
                                    self.strategy.data_shard(), 1, self.strategy.grad_replicas,
                                    torch.device("cpu"))
            train_step(self.strategy, StepContext(), self.module, self.optimizer, batch,
                       self.loss_fn, self.autocast)
        took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(took, op=dist.ReduceOp.MAX)
        return float(took)


def bench_rank(rank: int, world: int, steps: int, warm: int, repeats: int) -> dict:
    from bigtrain.parallel.balanced import BalancedDataParallel
    slow = {1: SLOW}
    even = Contender(BalancedDataParallel(balance="even", slow_ranks=slow), steps)
    speed = Contender(BalancedDataParallel(balance="speed", slow_ranks=slow, rebalance_every=5),
                      steps)
    speed.run(warm)  # shares converge before anything is timed
    times = alternate({"equal split": lambda: even.run(steps),
                       "speed-aware": lambda: speed.run(steps)}, repeats=repeats, warmup=1)
    return {"times": times, "shares": speed.strategy.stats()["shares"],
            "history": speed.strategy.stats()["share_history"], "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 repeats of 5 steps")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warm", type=int, default=30, help="speed-aware steps before timing")
    args = parser.parse_args()
    steps = args.steps or (5 if args.quick else 10)
    repeats = args.repeats or (5 if args.quick else 7)
    out = run_ranks(bench_rank, WORLD, steps, args.warm, repeats, timeout=540.0)[0]
    print(machine_line() + f" (in each rank: {out['threads']} torch threads)")
    print(f"rank 1 slowed {SLOW:.0f}x by the knob; global batch {BATCH}; "
          f"speed-aware shares after warm-up: {[round(s, 3) for s in out['shares']]} "
          f"(ideal {1 - 1 / (SLOW + 1):.2f} / {1 / (SLOW + 1):.2f})")
    print("  share history: " + ", ".join(f"{h[0]:.2f}/{h[1]:.2f}" for h in out["history"]))
    rows = [Row(name, steps * BATCH, secs) for name, secs in out["times"].items()]
    report_step_ratio(f"{steps} steps per repeat, 2 ranks", rows, steps, "speed-aware",
                      "equal split", TARGET, ideal=2 / (SLOW + 1))


if __name__ == "__main__":
    main()
